//! The `models` section: concrete models (a provider and an upstream model id) and
//! multi-target aliases (routing over concrete models).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::{raw, Errors, Refs};
use crate::config::Kind;
use crate::provider::{Provider, Target};
use crate::route::{Model, ModelRoute, RouteTarget, Routing};

/// Every model by alias, and the aliases in config order. Concrete models first:
/// multi-target aliases may only point at concrete ones.
pub(super) fn compile_models(
    list: &[raw::Model],
    providers: &HashMap<String, Arc<Provider>>,
    refs: &Refs<'_, '_>,
    errs: &mut Errors,
) -> (HashMap<String, Arc<Model>>, Vec<String>) {
    let mut targets: HashMap<&str, Target> = HashMap::new();
    for (i, m) in list.iter().enumerate() {
        let path = format!("models[{i}]");
        match (&m.provider_key, &m.routing) {
            (Some(pk), None) => {
                if let Some(p) = providers.get(pk) {
                    let upstream_model = m.model.clone().unwrap_or_else(|| m.name.clone());
                    if upstream_model.is_empty() {
                        errs.push(format!("{path}.model"), "must not be empty");
                    }
                    let quota = m.quota.and_then(|q| compile_quota(&path, &m.name, q, refs, errs));
                    targets.insert(
                        &m.name,
                        Target {
                            alias: m.name.clone(),
                            provider: p.clone(),
                            upstream_model,
                            quota,
                        },
                    );
                } else {
                    refs.check(format!("{path}.provider_key"), Kind::ProviderKeys, pk, errs);
                }
            }
            (None, Some(_)) => {
                if m.quota.is_some() {
                    errs.push(
                        format!("{path}.quota"),
                        "a quota is what a provider grants one concrete model: set it on the targets",
                    );
                }
                if m.model.is_some() {
                    errs.push(
                        format!("{path}.model"),
                        "a multi-target alias takes its models from routing.targets",
                    );
                }
            }
            (Some(_), Some(_)) => errs.push(
                &path,
                "set either provider_key (one model) or routing (several targets), not both",
            ),
            (None, None) => errs.push(&path, "needs provider_key (one model) or routing (several targets)"),
        }
    }

    let mut models = HashMap::new();
    let mut model_order = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let path = format!("models[{i}]");
        refs.check_policies(&path, m.rate_limit.as_deref(), &m.guardrails, None, errs);
        if let Some(c) = &m.cache {
            refs.check(format!("{path}.cache"), Kind::Cache, c, errs);
        }
        if let Some(pr) = &m.pricing {
            let prices = [
                Some(pr.input_per_mtok),
                Some(pr.output_per_mtok),
                pr.cached_input_per_mtok,
                pr.cache_write_per_mtok,
                Some(pr.per_image),
                Some(pr.per_audio_minute),
                pr.audio_input_per_mtok,
                pr.audio_output_per_mtok,
            ];
            // `!(p >= 0)` also refuses NaN.
            if prices.into_iter().flatten().any(|p| !(p >= 0.0 && p.is_finite())) {
                errs.push(format!("{path}.pricing"), "prices must be zero or positive numbers");
            }
            if pr.batch_discount.is_some_and(|d| !(0.0..=1.0).contains(&d)) {
                errs.push(
                    format!("{path}.pricing.batch_discount"),
                    "must be a share of the normal price, from 0 to 1",
                );
            }
        }
        let route = if let Some(r) = &m.routing {
            compile_routing(&path, r, &targets, list, refs, errs).map(ModelRoute::Multi)
        } else {
            targets.get(m.name.as_str()).cloned().map(ModelRoute::Single)
        };
        if let Some(route) = route {
            if !models.contains_key(&m.name) {
                model_order.push(m.name.clone());
                models.insert(
                    m.name.clone(),
                    Arc::new(Model {
                        name: m.name.clone(),
                        route,
                        limits: refs.bind(m.rate_limit.as_deref(), &format!("model={}", m.name)),
                        guardrails: refs.guardrails(&m.guardrails),
                        cache: m.cache.as_ref().and_then(|c| refs.caches.get(c.as_str()).cloned()),
                        pricing: m.pricing,
                    }),
                );
            }
        }
    }
    (models, model_order)
}

/// A concrete model's `quota`: its provider's requests and tokens per minute, bound as
/// limit rules of their own (`quota:<name>`), kept in Redis when the limits are.
fn compile_quota(
    path: &str,
    name: &str,
    q: raw::Quota,
    refs: &Refs<'_, '_>,
    errs: &mut Errors,
) -> Option<Arc<crate::limit::Binding>> {
    if q.rpm.is_none() && q.tpm.is_none() {
        errs.push(format!("{path}.quota"), "needs rpm, tpm or both");
        return None;
    }
    if q.rpm == Some(0) || q.tpm == Some(0) {
        errs.push(format!("{path}.quota"), "rpm and tpm must be at least 1");
        return None;
    }
    let policy = raw::RateLimit {
        name: format!("quota:{name}"),
        requests_per_second: None,
        requests_per_minute: q.rpm,
        requests_per_hour: None,
        requests_per_day: None,
        tokens_per_minute: q.tpm,
        tokens_per_day: None,
        concurrency: None,
    };
    Some(refs.ctx.limits.bind(&policy, &format!("target={name}")))
}

fn compile_routing(
    path: &str,
    r: &raw::Routing,
    targets: &HashMap<&str, Target>,
    list: &[raw::Model],
    refs: &Refs<'_, '_>,
    errs: &mut Errors,
) -> Option<Routing> {
    let before = errs.0.len();
    if r.targets.is_empty() {
        errs.push(format!("{path}.routing.targets"), "needs at least one target");
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (j, t) in r.targets.iter().enumerate() {
        let tp = format!("{path}.routing.targets[{j}]");
        if !seen.insert(t.model.as_str()) {
            errs.push(format!("{tp}.model"), format!("'{}' is listed twice", t.model));
        }
        if t.weight == 0 {
            errs.push(format!("{tp}.weight"), "must be at least 1");
        }
        match targets.get(t.model.as_str()) {
            Some(target) => {
                let pricing = list.iter().find(|m| m.name == t.model).and_then(|m| m.pricing);
                let price = pricing.map(|p| p.input_per_mtok * r.input_per_output + p.output_per_mtok);
                if r.strategy == raw::Strategy::Cost && price.is_none() {
                    errs.push(
                        format!("{tp}.model"),
                        format!("strategy cost orders targets by pricing: '{}' has none", t.model),
                    );
                }
                if t.percent.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
                    errs.push(format!("{tp}.percent"), "must be a share of requests, from 0 to 100");
                }
                if t.owners.as_ref().is_some_and(Vec::is_empty) {
                    errs.push(format!("{tp}.owners"), "lists no owner: leave it out for every owner");
                }
                out.push(RouteTarget {
                    target: target.clone(),
                    priority: t.priority,
                    weight: t.weight,
                    price,
                    owners: t.owners.clone(),
                    percent: t.percent,
                })
            }
            None if refs
                .known
                .get(&Kind::Models)
                .is_some_and(|m| m.contains(t.model.as_str())) =>
            {
                errs.push(
                    format!("{tp}.model"),
                    format!(
                        "'{}' is itself a multi-target alias; targets must be concrete models",
                        t.model
                    ),
                )
            }
            None => refs.check(format!("{tp}.model"), Kind::Models, &t.model, errs),
        }
    }
    let (mut retry_on, mut retry_classes) = (Vec::new(), Vec::new());
    let given = r
        .retry_on
        .clone()
        .unwrap_or_else(|| [429, 500, 502, 503, 504].map(raw::RetryOn::Status).to_vec());
    for (j, entry) in given.iter().enumerate() {
        match entry {
            raw::RetryOn::Status(s) if (400..=599).contains(s) => retry_on.push(*s),
            raw::RetryOn::Status(_) => errs.push(
                format!("{path}.routing.retry_on[{j}]"),
                "must be an HTTP error status (400-599)",
            ),
            raw::RetryOn::Class(name) => match crate::provider::ErrorClass::parse(name) {
                Some(c) => retry_classes.push(c),
                None => errs.push(
                    format!("{path}.routing.retry_on[{j}]"),
                    format!(
                        "'{name}' is neither an HTTP status nor an error class ({})",
                        crate::provider::ErrorClass::NAMES.join(", ")
                    ),
                ),
            },
        }
    }
    if !out.is_empty() && out.iter().all(|t| t.owners.is_some() || t.percent.is_some()) {
        errs.push(
            format!("{path}.routing.targets"),
            "every target is a canary (owners or percent): one must take every request",
        );
    }
    if r.max_attempts == Some(0) {
        errs.push(format!("{path}.routing.max_attempts"), "must be at least 1");
    }
    if !(r.input_per_output >= 0.0 && r.input_per_output.is_finite()) {
        errs.push(
            format!("{path}.routing.input_per_output"),
            "must be zero or a positive number",
        );
    }
    if r.failures_before_cooldown == 0 {
        errs.push(format!("{path}.routing.failures_before_cooldown"), "must be at least 1");
    }
    if errs.0.len() > before {
        return None;
    }
    Some(Routing {
        rr_next: Default::default(),
        strategy: r.strategy,
        max_attempts: r.max_attempts.unwrap_or(out.len() as u32),
        targets: out,
        retry_on,
        retry_classes,
        cooldown: Duration::from_secs(r.cooldown_s),
        failures_before_cooldown: r.failures_before_cooldown,
        sticky_owner: r.sticky == Some(raw::Sticky::Owner),
    })
}
