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

/// A URL as logs and status views may show it: without its query or fragment, which may
/// carry a credential.
pub fn shown(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}
