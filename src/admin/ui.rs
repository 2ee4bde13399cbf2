//! The console (`/ui/` on the admin listener): one page, its script and its style, built
//! into the binary. The files hold no data; everything they show comes from the admin API
//! with the admin key the operator logs in with. The headers forbid loading anything from
//! elsewhere, inline script, and framing.

use http::Response;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The console's answer for `path`, if it is one of its paths.
pub fn asset(path: &str) -> Option<Response<Vec<u8>>> {
    let (body, content_type) = match path {
        "/ui" => {
            return Response::builder()
                .status(308)
                .header("location", "/ui/")
                .header("content-length", 0)
                .body(Vec::new())
                .ok()
        }
        "/ui/" | "/ui/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/ui/app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/ui/app.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    Response::builder()
        .status(200)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-cache")
        .header("content-security-policy", CSP)
        .header("x-content-type-options", "nosniff")
        .header("x-frame-options", "DENY")
        .header("referrer-policy", "no-referrer")
        .body(body.as_bytes().to_vec())
        .ok()
}
