//! `${VAR}` and `${VAR:-default}` interpolation over a parsed YAML tree.
//!
//! It runs on the parsed tree rather than the raw text, so a value can never change the
//! YAML structure around it (a secret containing `#` or `: ` stays one string), and every
//! error carries the YAML path of the string it came from. `$${` writes a literal `${`.

use serde_yaml::Value;

use super::ConfigError;

/// Interpolates every string in `value`, collecting one error per unresolved variable.
///
/// A string that is exactly one `${...}` takes the type its result reads as (so
/// `grace_period_s: ${GRACE:-10}` is a number); any other string stays a string.
pub fn interpolate_tree(
    value: &mut Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) {
    match value {
        Value::String(s) => {
            if !s.contains('$') {
                return;
            }
            match interpolate(s, env) {
                Ok(out) => {
                    let whole = s.starts_with("${") && s.ends_with('}') && s.matches("${").count() == 1;
                    *value = if whole { retype(out) } else { Value::String(out) };
                }
                Err(var) => errors.push(ConfigError::new(
                    path,
                    format!("environment variable {var} is not set and has no default (write ${{{var}:-default}})"),
                )),
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_tree(item, &format!("{path}[{i}]"), env, errors);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = k.as_str().map(str::to_owned).unwrap_or_else(|| format!("{k:?}"));
                let child = if path.is_empty() { key } else { format!("{path}.{key}") };
                interpolate_tree(v, &child, env, errors);
            }
        }
        Value::Tagged(t) => interpolate_tree(&mut t.value, path, env, errors),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Numbers and booleans keep their type; everything else is a string.
fn retype(s: String) -> Value {
    match serde_yaml::from_str::<Value>(&s) {
        Ok(v @ (Value::Number(_) | Value::Bool(_))) => v,
        _ => Value::String(s),
    }
}

/// Returns the interpolated string, or the name of the first unresolved variable.
pub fn interpolate(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let Some(end) = tail.find('}') else {
                // An unterminated `${` is literal text, as in shells.
                out.push_str(after);
                return Ok(out);
            };
            let expr = &tail[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            match (env(name).filter(|v| !v.is_empty() || default.is_none()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(name.to_owned()),
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("example.com".into()),
            "PORT" => Some("8080".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn plain_and_default() {
        assert_eq!(
            interpolate("http://${HOST}:${PORT}/v1", &env).unwrap(),
            "http://example.com:8080/v1"
        );
        assert_eq!(interpolate("${NOPE:-fallback}", &env).unwrap(), "fallback");
        assert_eq!(interpolate("${NOPE:-}", &env).unwrap(), "");
        assert_eq!(interpolate("${EMPTY:-d}", &env).unwrap(), "d");
        assert_eq!(interpolate("${EMPTY}", &env).unwrap(), "");
    }

    #[test]
    fn escapes_and_literals() {
        assert_eq!(
            interpolate("cost $5 and $${HOST}", &env).unwrap(),
            "cost $5 and ${HOST}"
        );
        assert_eq!(interpolate("broken ${HOST", &env).unwrap(), "broken ${HOST");
    }

    #[test]
    fn missing_variable_is_named() {
        assert_eq!(interpolate("a ${MISSING} b", &env).unwrap_err(), "MISSING");
    }

    #[test]
    fn tree_retypes_whole_expressions_and_reports_paths() {
        let mut v: Value = serde_yaml::from_str(
            "server: {grace_period_s: '${PORT}', url: 'h://${HOST}'}\nkeys: [{key: '${A}'}, {key: '${B}'}]",
        )
        .unwrap();
        let mut errors = Vec::new();
        interpolate_tree(&mut v, "", &env, &mut errors);
        assert_eq!(v["server"]["grace_period_s"], Value::Number(8080.into()));
        assert_eq!(v["server"]["url"], Value::String("h://example.com".into()));
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["keys[0].key", "keys[1].key"]);
    }
}
