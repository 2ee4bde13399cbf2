//! An in-test OTLP/HTTP collector: decodes what the gateway exports.

use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// Collects every span posted to `/v1/traces`.
pub struct Receiver {
    port: u16,
    pub spans: Arc<Mutex<Vec<Span>>>,
    pub services: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let services = Arc::new(Mutex::new(Vec::new()));
        let (sp, sv) = (spans.clone(), services.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (sp, sv) = (sp.clone(), sv.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (sp, sv) = (sp.clone(), sv.clone());
                        async move {
                            assert_eq!(req.uri().path(), "/v1/traces");
                            assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let export = ExportTraceServiceRequest::decode(body).unwrap();
                            for rs in export.resource_spans {
                                for kv in rs.resource.iter().flat_map(|r| &r.attributes) {
                                    if kv.key == "service.name" {
                                        sv.lock()
                                            .unwrap()
                                            .push(text(kv.value.as_ref().and_then(|v| v.value.as_ref())));
                                    }
                                }
                                for ss in rs.scope_spans {
                                    sp.lock().unwrap().extend(ss.spans);
                                }
                            }
                            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                                bytes::Bytes::new(),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { port, spans, services }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.port)
    }

    /// Waits for the spans of the trace `trace_id` (hex) until `n` arrived.
    pub async fn trace(&self, trace_id: &str, n: usize) -> Vec<Span> {
        let mut found = Vec::new();
        for _ in 0..150 {
            found = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| hex(&s.trace_id) == trace_id)
                .cloned()
                .collect();
            if found.len() >= n {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        found
    }
}

pub fn text(v: Option<&Any>) -> String {
    match v {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::ArrayValue(a)) => a
            .values
            .iter()
            .map(|v| text(v.value.as_ref()))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
}
