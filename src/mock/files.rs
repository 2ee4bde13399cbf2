//! OpenAI's Files and Batches APIs, as the mock serves them: files kept in memory, and a
//! batch that completes on its first retrieve, writing an output file with one chat
//! completion (and its usage) per input line. A batch's `metadata.mock` stages a
//! provider that misbehaves: `foreign` reports files the gateway never uploaded, `early`
//! an output file while the batch is still in progress.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use serde_json::{json, Value};

use super::{bytes_response, error, full, Body};

/// Usage the mock reports for every batch line: input and output tokens.
pub const LINE_USAGE: (u64, u64) = (100, 20);

#[derive(Default)]
pub struct Files {
    files: Mutex<HashMap<String, (Value, Bytes)>>,
    batches: Mutex<HashMap<String, Value>>,
    next: Mutex<u64>,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Files {
    fn id(&self, prefix: &str) -> String {
        let mut n = self.next.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        format!("{prefix}mock{n}")
    }

    fn store(&self, purpose: &str, filename: &str, content: Bytes) -> Value {
        let id = self.id("file-");
        let object = json!({"id": id, "object": "file", "bytes": content.len(), "created_at": now(),
            "filename": filename, "purpose": purpose, "status": "processed"});
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (object.clone(), content));
        object
    }

    /// The answer for a Files or Batches path (`.../files...`, `.../batches...`; Azure's
    /// under `/openai`), `None` for any other path.
    pub async fn answer(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Option<Response<Body>> {
        let segments: Vec<&str> = path.split('/').collect();
        let at = segments.iter().position(|s| *s == "files" || *s == "batches")?;
        let rest = &segments[at..];
        Some(match (method.as_str(), rest) {
            ("POST", ["files"]) => self.upload(headers, body).await,
            ("GET", ["files", id]) => match self.files.lock().unwrap_or_else(|p| p.into_inner()).get(*id) {
                Some((o, _)) => full(StatusCode::OK, o),
                None => error(404, &format!("No such File object: {id}"), None),
            },
            ("GET", ["files", id, "content"]) => match self.files.lock().unwrap_or_else(|p| p.into_inner()).get(*id) {
                Some((_, c)) => bytes_response(StatusCode::OK, "application/octet-stream", c.clone()),
                None => error(404, &format!("No such File object: {id}"), None),
            },
            ("DELETE", ["files", id]) => match self.files.lock().unwrap_or_else(|p| p.into_inner()).remove(*id) {
                Some(_) => full(StatusCode::OK, &json!({"id": id, "object": "file", "deleted": true})),
                None => error(404, &format!("No such File object: {id}"), None),
            },
            ("POST", ["batches"]) => self.create(body),
            ("GET", ["batches", id]) => self.retrieve(id),
            ("POST", ["batches", id, "cancel"]) => {
                let mut batches = self.batches.lock().unwrap_or_else(|p| p.into_inner());
                match batches.get_mut(*id) {
                    Some(b) => {
                        if b["status"] == "in_progress" {
                            b["status"] = json!("cancelled");
                            b["cancelled_at"] = json!(now());
                        }
                        full(StatusCode::OK, b)
                    }
                    None => error(404, &format!("No such Batch object: {id}"), None),
                }
            }
            _ => error(404, "unknown route", None),
        })
    }

    async fn upload(&self, headers: &HeaderMap, body: &Bytes) -> Response<Body> {
        let ct = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let Ok(boundary) = multer::parse_boundary(ct) else {
            return error(400, "expected multipart/form-data", None);
        };
        let b = body.clone();
        let mut form = multer::Multipart::new(
            futures_util::stream::once(async move { Ok::<Bytes, std::convert::Infallible>(b) }),
            boundary,
        );
        let (mut purpose, mut file) = (None, None);
        while let Ok(Some(field)) = form.next_field().await {
            match field.name() {
                Some("purpose") => purpose = field.text().await.ok(),
                Some("file") => {
                    let name = field.file_name().unwrap_or("upload").to_owned();
                    file = field.bytes().await.ok().map(|b| (name, b));
                }
                _ => {}
            }
        }
        let (Some(purpose), Some((name, content))) = (purpose, file) else {
            return error(400, "purpose and file are required", None);
        };
        full(StatusCode::OK, &self.store(&purpose, &name, content))
    }

    fn create(&self, body: &Bytes) -> Response<Body> {
        let Ok(req) = serde_json::from_slice::<Value>(body) else {
            return error(400, "invalid JSON", None);
        };
        let input = req["input_file_id"].as_str().unwrap_or_default();
        if !self.files.lock().unwrap_or_else(|p| p.into_inner()).contains_key(input) {
            return error(404, &format!("No such File object: {input}"), None);
        }
        let id = self.id("batch_");
        let batch = json!({"id": id, "object": "batch", "endpoint": req["endpoint"], "errors": null,
            "input_file_id": input, "completion_window": req["completion_window"], "status": "in_progress",
            "output_file_id": null, "error_file_id": null, "created_at": now(),
            "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": req["metadata"]});
        self.batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, batch.clone());
        let mut batch = batch;
        if req["metadata"]["mock"] == "early" {
            // A provider that names an output file before the batch has ended.
            batch["output_file_id"] = json!("file-early-output");
        }
        full(StatusCode::OK, &batch)
    }

    /// A batch in progress completes here: one output line per input line.
    fn retrieve(&self, id: &str) -> Response<Body> {
        let Some(mut b) = self.batches.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned() else {
            return error(404, &format!("No such Batch object: {id}"), None);
        };
        if b["status"] == "in_progress" {
            let input = b["input_file_id"].as_str().unwrap_or_default().to_owned();
            let content = self
                .files
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&input)
                .map(|(_, c)| c.clone())
                .unwrap_or_default();
            let mut out = String::new();
            let mut n = 0;
            for line in content.split(|b| *b == b'\n') {
                let Ok(req) = serde_json::from_slice::<Value>(line) else {
                    continue;
                };
                n += 1;
                let (input_t, output_t) = LINE_USAGE;
                let answer = json!({"id": format!("chatcmpl-batch{n}"), "object": "chat.completion",
                    "created": now(), "model": req["body"]["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the batch."},
                        "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": input_t, "completion_tokens": output_t, "total_tokens": input_t + output_t}});
                let line = json!({"id": format!("batch_req_{n}"), "custom_id": req["custom_id"],
                    "response": {"status_code": 200, "request_id": format!("req_{n}"), "body": answer}, "error": null});
                out.push_str(&line.to_string());
                out.push('\n');
            }
            let output = self.store("batch_output", "batch_output.jsonl", Bytes::from(out));
            b["status"] = json!("completed");
            b["completed_at"] = json!(now());
            b["output_file_id"] = output["id"].clone();
            b["request_counts"] = json!({"total": n, "completed": n, "failed": 0});
            self.batches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.to_owned(), b.clone());
        }
        if b["metadata"]["mock"] == "foreign" {
            b["input_file_id"] = json!("file-foreign-input");
            b["error_file_id"] = json!("file-foreign-errors");
        }
        full(StatusCode::OK, &b)
    }
}
