//! The gateway's own HTTP calls, apart from proxied traffic: Vertex AI's token exchange
//! and JWT key sets. A client with a whole-call timeout, and answers read only up to a
//! bound, so a wrong or hostile endpoint costs bounded time and memory.

use std::time::Duration;

/// A client for calls that must end within `timeout`, redirects included.
pub fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// The answer's status and body, read as it arrives and refused past `max` bytes.
/// Errors name `what` and never the URL's query (it may carry a credential).
pub async fn read_capped(
    mut resp: reqwest::Response,
    max: usize,
    what: &str,
) -> Result<(reqwest::StatusCode, Vec<u8>), String> {
    let status = resp.status();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{what}: {}", e.without_url()))? {
        if body.len() + chunk.len() > max {
            return Err(format!("{what} answered more than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, body))
}

/// A URL as logs, the status document and error messages may show it: without its
/// userinfo (`user:password@`), query and fragment, any of which may carry a credential.
/// Each part is what the URL parser that fetches the URL takes it to be (a password
/// percent-encoded or not); text that does not parse as a URL with a host loses
/// everything up to its last `@` and from its first `?` or `#`, so no reading of it can
/// show a credential.
pub fn shown(url: &str) -> String {
    redacted(url, None)
}

/// [`shown`] for the admin API: each part taken out is replaced by `mark`
/// (`https://<redacted>@host/mcp?<redacted>`), so whoever reads the resource sees that a
/// credential is there, and a resource written back unchanged keeps it
/// (`store::prepare`). Text that does not parse as a URL is `mark` whole.
pub fn marked(url: &str, mark: &str) -> String {
    redacted(url, Some(mark))
}

fn redacted(url: &str, mark: Option<&str>) -> String {
    // Without a host (`user:pass@host` reads as scheme `user`), nothing says what is
    // userinfo: treated as text that does not parse.
    let Some(mut u) = reqwest::Url::parse(url).ok().filter(reqwest::Url::has_host) else {
        if let Some(mark) = mark {
            return mark.to_owned();
        }
        let after = url.rfind('@').map_or(url, |at| &url[at + 1..]);
        let kept = after.split(['?', '#']).next().unwrap_or_default();
        return match (url.find("://"), url.rfind('@')) {
            (Some(scheme_end), Some(_)) => format!("{}{kept}", &url[..scheme_end + 3]),
            _ => kept.to_owned(),
        };
    };
    let userinfo = !u.username().is_empty() || u.password().is_some();
    let (query, fragment) = (u.query().is_some(), u.fragment().is_some());
    // Refused only by URLs without a host, which never get here.
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    let mut out = u.to_string();
    if let Some(mark) = mark {
        if userinfo {
            let at = out.find("://").map_or(0, |i| i + 3);
            out.insert_str(at, &format!("{mark}@"));
        }
        if query {
            out.push('?');
            out.push_str(mark);
        }
        if fragment {
            out.push('#');
            out.push_str(mark);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_carry_no_userinfo_query_or_fragment() {
        for (url, want) in [
            ("https://a/jwks?token=secret", "https://a/jwks"),
            ("https://user:s3cret@idp.test/jwks", "https://idp.test/jwks"),
            ("https://t0ken@idp.test:8443/jwks#s3cret", "https://idp.test:8443/jwks"),
            // Percent-encoded separators stay inside the userinfo.
            ("https://us%40er:p%3As%2Fs@idp.test/x", "https://idp.test/x"),
            ("http://:s3cret@127.0.0.1:9/mcp", "http://127.0.0.1:9/mcp"),
            ("https://user:pa ss@idp.test/x", "https://idp.test/x"),
            // Do not parse: everything to the last @ goes, and the query.
            ("https://user:pa?ss@idp.test/x", "https://idp.test/x"),
            ("https://user:s3cret@idp test/x?q=1", "https://idp test/x"),
            ("user:s3cret@idp.test", "idp.test"),
            ("not a url?token=s3cret", "not a url"),
        ] {
            assert_eq!(shown(url), want, "{url}");
        }
        assert_eq!(shown("https://idp.test/realm/"), "https://idp.test/realm/");
    }

    #[test]
    fn marked_urls_show_where_a_credential_was() {
        let m = "<redacted>";
        assert_eq!(
            marked("https://user:s3cret@tools.test/mcp?key=s3cret#s3cret", m),
            "https://<redacted>@tools.test/mcp?<redacted>#<redacted>"
        );
        assert_eq!(marked("https://tools.test/mcp", m), "https://tools.test/mcp");
        assert_eq!(marked("https://user:pa?ss@tools.test/", m), m);
    }
}
