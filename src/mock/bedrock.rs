//! The mock's Bedrock side: SigV4 verification of a Converse request (the signature is
//! computed again with `aws-sigv4` from the request's own date, scope, headers and body,
//! with the mock's `--api-key` as the secret access key) and AWS event-stream frames.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::Bytes;
use http::HeaderMap;
use serde_json::Value;

/// How far a request's `x-amz-date` may be from the mock's clock (AWS allows 5 minutes).
const SKEW: Duration = Duration::from_secs(300);

/// `Ok` when `Authorization` is a valid SigV4 signature of this request for service
/// `bedrock` made with `secret`; else why not.
pub fn verify(headers: &HeaderMap, path_and_query: &str, body: &[u8], secret: &str) -> Result<(), String> {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let auth = h("authorization").ok_or("no Authorization header")?;
    let cred = auth
        .strip_prefix("AWS4-HMAC-SHA256 Credential=")
        .and_then(|rest| rest.split(',').next())
        .ok_or("not a SigV4 Authorization header")?;
    let scope: Vec<&str> = cred.split('/').collect();
    let [key_id, _date, region, service, "aws4_request"] = scope[..] else {
        return Err("malformed credential scope".into());
    };
    if service != "bedrock" {
        return Err(format!("signed for service {service}, not bedrock"));
    }
    let date = h("x-amz-date").ok_or("no x-amz-date")?;
    let when = chrono::NaiveDateTime::parse_from_str(date, "%Y%m%dT%H%M%SZ")
        .map_err(|_| "malformed x-amz-date")?
        .and_utc();
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(when.timestamp()).unwrap_or(0));
    let skew = SystemTime::now().duration_since(time).unwrap_or_else(|e| e.duration());
    if skew > SKEW {
        return Err("Signature expired".into());
    }
    let host = h("host").ok_or("no host")?;
    let content_type = h("content-type").unwrap_or("application/json");
    let token = h("x-amz-security-token").map(str::to_owned);
    let identity = Credentials::new(key_id, secret, token, None, "mock").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let uri = format!("http://{host}{path_and_query}");
    let signable = SignableRequest::new(
        "POST",
        uri,
        [("host", host), ("content-type", content_type)].into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(signable, &params).map_err(|e| e.to_string())?.into_parts();
    let expected = instructions
        .headers()
        .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.to_owned());
    if expected.as_deref() == Some(auth) {
        Ok(())
    } else {
        Err("The request signature we calculated does not match the signature you provided.".into())
    }
}

/// One event of a ConverseStream answer, framed.
pub fn event_frame(event_type: &str, payload: &Value) -> Bytes {
    let m = Message::new_from_parts(
        vec![
            Header::new(":message-type", HeaderValue::String("event".into())),
            Header::new(":event-type", HeaderValue::String(event_type.to_owned().into())),
            Header::new(":content-type", HeaderValue::String("application/json".into())),
        ],
        Bytes::from(payload.to_string()),
    );
    let mut out = Vec::new();
    // Writing to a Vec cannot fail for messages this small.
    let _ = aws_smithy_eventstream::frame::write_message_to(&m, &mut out);
    Bytes::from(out)
}

/// An exception mid-stream, framed.
pub fn exception_frame(exception_type: &str, message: &str) -> Bytes {
    let m = Message::new_from_parts(
        vec![
            Header::new(":message-type", HeaderValue::String("exception".into())),
            Header::new(":exception-type", HeaderValue::String(exception_type.to_owned().into())),
            Header::new(":content-type", HeaderValue::String("application/json".into())),
        ],
        Bytes::from(serde_json::json!({ "message": message }).to_string()),
    );
    let mut out = Vec::new();
    let _ = aws_smithy_eventstream::frame::write_message_to(&m, &mut out);
    Bytes::from(out)
}
