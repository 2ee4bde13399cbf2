//! Files and batches (`/v1/files`, `/v1/batches`), to OpenAI-style providers.
//!
//! aigw answers these itself and calls the provider with the provider key's credential
//! (never the caller's). Every id a caller sees is aigw's own ([`store::Ids`]): it maps to
//! the owner, the provider key and the provider's id, and another owner's id is as
//! absent as one never handed out. A batch input file is checked line by line
//! ([`jsonl`]) and uploaded with each line's alias rewritten to its upstream model. A
//! batch that ends with an output file is charged once, fleet-wide, from the usage of
//! the output file's lines, at `pricing.batch_discount` of the normal price.

pub mod jsonl;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use percent_encoding::percent_decode_str;
use serde_json::{json, Value};

use crate::auth::ApiKeyEntry;
use crate::budget::Budgets;
use crate::config::Snapshot;
use crate::error::GwError;
use crate::metrics::Metrics;
use crate::provider::{form, openai, Provider};
use crate::route::ModelRoute;
use crate::usage::Usage;
use store::{now_ms, Cap, Ids, Kind, Record};

/// The purposes OpenAI's Files API takes.
pub const PURPOSES: [&str; 6] = ["assistants", "batch", "fine-tune", "vision", "user_data", "evals"];
/// The largest JSON answer (a file or batch object) read from a provider.
const MAX_OBJECT_BYTES: usize = 1 << 20;
/// The longest output file line whose usage is read; a longer one is not charged.
const MAX_OUTPUT_LINE: usize = 16 << 20;
/// Each read from the provider (the header, every chunk of a download) waits this long.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One files or batches operation, from the method and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Upload,
    ListFiles,
    Retrieve(String),
    Content(String),
    Delete(String),
    CreateBatch,
    ListBatches,
    GetBatch(String),
    Cancel(String),
}

impl Op {
    /// Whether the operation reads a request body.
    pub fn has_body(&self) -> bool {
        matches!(self, Op::Upload | Op::CreateBatch)
    }
}

/// The operation at `path`; `None` when the path is not under `/v1/files` or
/// `/v1/batches`.
pub fn route(method: &Method, path: &str) -> Option<Result<Op, GwError>> {
    let segments: Vec<&str> = path.strip_prefix("/v1/")?.split('/').collect();
    let wrong = |allow: &'static str| GwError::MethodNotAllowed {
        method: method.to_string(),
        path: path.to_owned(),
        allow,
    };
    let get = *method == Method::GET || *method == Method::HEAD;
    let id = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let op = match segments.as_slice() {
        ["files"] if *method == Method::POST => Op::Upload,
        ["files"] if get => Op::ListFiles,
        ["files"] => return Some(Err(wrong("GET, POST"))),
        ["files", f] => match id(f) {
            Some(f) if get => Op::Retrieve(f),
            Some(f) if *method == Method::DELETE => Op::Delete(f),
            Some(_) => return Some(Err(wrong("GET, DELETE"))),
            None => return None,
        },
        ["files", f, "content"] => match id(f) {
            Some(f) if get => Op::Content(f),
            Some(_) => return Some(Err(wrong("GET"))),
            None => return None,
        },
        ["batches"] if *method == Method::POST => Op::CreateBatch,
        ["batches"] if get => Op::ListBatches,
        ["batches"] => return Some(Err(wrong("GET, POST"))),
        ["batches", b] => match id(b) {
            Some(b) if get => Op::GetBatch(b),
            Some(_) => return Some(Err(wrong("GET"))),
            None => return None,
        },
        ["batches", b, "cancel"] => match id(b) {
            Some(b) if *method == Method::POST => Op::Cancel(b),
            Some(_) => return Some(Err(wrong("POST"))),
            None => return None,
        },
        _ => return None,
    };
    Some(Ok(op))
}

/// What the handler answers.
pub enum Reply {
    Json(Value),
    /// A file's content as the provider sends it, streamed to the caller.
    Content {
        content_type: String,
        length: Option<u64>,
        body: reqwest::Response,
    },
}

/// The files and batches service of a process: the id store and the HTTP client.
pub struct Files {
    pub ids: Ids,
    http: reqwest::Client,
}

/// What one request reads besides its own input.
pub struct Env<'a> {
    pub snap: &'a Snapshot,
    pub budgets: &'a Budgets,
    pub metrics: &'a Metrics,
}

/// The caller's request.
pub struct Call<'a> {
    pub caller: &'a ApiKeyEntry,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    pub body: Bytes,
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// The id of a file a batch reported (its output or errors): the same on every instance
/// that sees the report, so a fleet maps it once.
fn derived_file_id(batch: &str, upstream: &str) -> String {
    let h = blake3::hash(format!("{batch}\0{upstream}").as_bytes()).to_hex();
    format!("file-{}", &h.as_str()[..32])
}

/// The provider's id of the object it created.
fn upstream_id(v: &Value, what: &str) -> Result<String, GwError> {
    v["id"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| GwError::UpstreamError(format!("The provider's {what} has no id.")))
}

/// `name`'s value in a query string, percent-decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode_str(k).decode_utf8_lossy() == name).then(|| {
            percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// The error a provider's refusal becomes: its 404 is the caller's 404 for the aigw id;
/// a 400 keeps the provider's message (what was wrong with the caller's input); anything
/// else is the provider's failure, not the caller's.
fn refused(status: reqwest::StatusCode, body: &[u8], id: Option<&str>) -> GwError {
    let message = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        v["error"]["message"]
            .as_str()
            .map(|m| m.chars().take(500).collect::<String>())
    });
    match (status.as_u16(), id) {
        (404, Some(id)) => GwError::NoSuchObject(id.to_owned()),
        (400 | 422, _) => GwError::InvalidRequest(format!(
            "The provider refused the request: {}",
            message.as_deref().unwrap_or("no reason given")
        )),
        (s, _) => GwError::UpstreamError(format!("The provider answered {s}.")),
    }
}

fn unreachable(e: reqwest::Error) -> GwError {
    let e = e.without_url();
    tracing::debug!(error = %e, "files: provider call failed");
    if e.is_timeout() {
        GwError::UpstreamTimeout
    } else {
        GwError::UpstreamError("The provider could not be reached.".into())
    }
}

impl Files {
    pub fn new(redis: Option<Arc<crate::redis_pool::RedisPool>>) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            // A provider's redirect would carry its credential elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the files HTTP client: {e}"))?;
        Ok(Self {
            ids: Ids::new(redis),
            http,
        })
    }

    fn request(&self, p: &Provider, method: Method, segments: &[&str]) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, openai::resource_url(p, segments));
        for (name, value) in &p.headers {
            r = r.header(name.clone(), value.clone());
        }
        if let Some((name, value)) = openai::credential(p) {
            r = r.header(name, value);
        }
        r
    }

    /// Calls the provider and reads its JSON answer; `id` is the aigw id a 404 is about.
    async fn call_json(&self, r: reqwest::RequestBuilder, id: Option<&str>) -> Result<Value, GwError> {
        let resp = r.send().await.map_err(unreachable)?;
        let (status, body) = crate::outbound::read_capped(resp, MAX_OBJECT_BYTES, "the provider")
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "files: provider answer unreadable");
                GwError::UpstreamError("The provider's answer could not be read.".into())
            })?;
        if !status.is_success() {
            return Err(refused(status, &body, id));
        }
        let v: Value = serde_json::from_slice(&body)
            .map_err(|_| GwError::UpstreamError("The provider's answer is not JSON.".into()))?;
        if !v.is_object() {
            return Err(GwError::UpstreamError(
                "The provider's answer is not a JSON object.".into(),
            ));
        }
        Ok(v)
    }

    fn provider<'s>(snap: &'s Snapshot, rec: &Record) -> Result<&'s Arc<Provider>, GwError> {
        snap.providers.get(&rec.provider).ok_or_else(|| {
            GwError::InvalidRequest(format!(
                "The provider key this object lives at ('{}') is no longer configured.",
                rec.provider
            ))
        })
    }

    pub async fn handle(&self, env: &Env<'_>, call: Call<'_>, op: Op) -> Result<Reply, GwError> {
        let owner = call.caller.owner.as_str();
        let keep = &env.snap.server.files;
        match op {
            Op::Upload => self.upload(env, &call).await.map(Reply::Json),
            Op::ListFiles => self.list_files(&call, owner, keep).await.map(Reply::Json),
            Op::Retrieve(id) => {
                let rec = self.ids.owned(&id, Kind::File, owner, keep).await?;
                let p = Self::provider(env.snap, &rec)?;
                let mut v = self
                    .call_json(self.request(p, Method::GET, &["files", &rec.upstream]), Some(&id))
                    .await?;
                v["id"] = json!(id);
                Ok(Reply::Json(v))
            }
            Op::Content(id) => {
                let rec = self.ids.owned(&id, Kind::File, owner, keep).await?;
                let p = Self::provider(env.snap, &rec)?;
                let resp = self
                    .request(p, Method::GET, &["files", &rec.upstream, "content"])
                    .send()
                    .await
                    .map_err(unreachable)?;
                if !resp.status().is_success() {
                    let status = resp.status();
                    let body = crate::outbound::read_capped(resp, MAX_OBJECT_BYTES, "the provider")
                        .await
                        .map(|(_, b)| b)
                        .unwrap_or_default();
                    return Err(refused(status, &body, Some(&id)));
                }
                let content_type = resp
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("application/octet-stream")
                    .to_owned();
                Ok(Reply::Content {
                    content_type,
                    length: resp.content_length(),
                    body: resp,
                })
            }
            Op::Delete(id) => {
                let rec = self.ids.owned(&id, Kind::File, owner, keep).await?;
                let p = Self::provider(env.snap, &rec)?;
                match self
                    .call_json(self.request(p, Method::DELETE, &["files", &rec.upstream]), Some(&id))
                    .await
                {
                    // Gone at the provider already: the id goes too.
                    Ok(_) | Err(GwError::NoSuchObject(_)) => {}
                    Err(e) => return Err(e),
                }
                self.ids.remove(&id, &rec).await?;
                Ok(Reply::Json(json!({"id": id, "object": "file", "deleted": true})))
            }
            Op::CreateBatch => self.create_batch(env, &call).await.map(Reply::Json),
            Op::GetBatch(id) => {
                let rec = self.ids.owned(&id, Kind::Batch, owner, keep).await?;
                self.batch(env, &id, &rec, Method::GET, false).await.map(Reply::Json)
            }
            Op::Cancel(id) => {
                let rec = self.ids.owned(&id, Kind::Batch, owner, keep).await?;
                self.batch(env, &id, &rec, Method::POST, true).await.map(Reply::Json)
            }
            Op::ListBatches => self.list_batches(env, &call, owner).await.map(Reply::Json),
        }
    }

    /// The provider key a file of `purpose` other than `batch` goes to: the only
    /// OpenAI-style provider key among the models the caller may use.
    fn provider_for_upload<'s>(snap: &'s Snapshot, caller: &ApiKeyEntry) -> Result<&'s Arc<Provider>, GwError> {
        let mut reach: BTreeMap<&str, &Arc<Provider>> = BTreeMap::new();
        for (name, model) in &snap.models {
            if !caller.allows(name) {
                continue;
            }
            let targets: Vec<&crate::provider::Target> = match &model.route {
                ModelRoute::Single(t) => vec![t],
                ModelRoute::Multi(r) => r.targets.iter().map(|t| &t.target).collect(),
            };
            for t in targets.into_iter().filter(|t| t.wire() == crate::api::Wire::OpenAi) {
                reach.insert(t.provider.name.as_str(), &t.provider);
            }
        }
        match reach.len() {
            1 => Ok(reach.into_values().next().ok_or(GwError::Internal)?),
            0 => Err(GwError::InvalidRequest(
                "This key may use no model of an OpenAI-style provider (openai, azure, openai_compatible), where files are kept.".into(),
            )),
            _ => Err(GwError::InvalidRequest(format!(
                "This key reaches several OpenAI-style provider keys ({}): a file of this purpose has no model to choose one by. Use a key limited to one of them.",
                reach.keys().copied().collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    async fn upload(&self, env: &Env<'_>, call: &Call<'_>) -> Result<Value, GwError> {
        let boundary = form::boundary(call.headers.get(http::header::CONTENT_TYPE).map(|v| v.as_bytes()))?;
        // The parts are placed in the body the gateway holds: the file is a slice of it,
        // never copied.
        let (mut purpose, mut file) = (None, None);
        for part in form::read(&call.body, &boundary, &["file"])? {
            let twice = || GwError::InvalidRequest(format!("The form has more than one '{}' field.", part.name));
            match part.name.as_str() {
                "purpose" if purpose.is_some() => return Err(twice()),
                "purpose" => purpose = part.text,
                "file" if file.is_some() => return Err(twice()),
                "file" => {
                    let name = part.file_name.unwrap_or_else(|| "upload".to_owned());
                    file = Some((name, call.body.slice(part.value)));
                }
                // Other fields (expires_after) are not passed on.
                _ => {}
            }
        }
        let purpose = purpose.ok_or_else(|| GwError::InvalidRequest("The form field 'purpose' is required.".into()))?;
        if !PURPOSES.contains(&purpose.as_str()) {
            return Err(GwError::InvalidRequest(format!(
                "'purpose' must be one of {}.",
                PURPOSES.join(", ")
            )));
        }
        let (filename, content) =
            file.ok_or_else(|| GwError::InvalidRequest("The form field 'file' is required.".into()))?;
        let keep = &env.snap.server.files;
        self.ids.room(Kind::File, &call.caller.owner, keep).await?;
        let len = content.len() as u64;
        let (provider, upload, aliases) = if purpose == "batch" {
            let checked = jsonl::check(env.snap, call.caller, &content)?;
            let lines = jsonl::Rewritten::new(content, checked.aliases.clone());
            let upload = reqwest::Body::wrap_stream(futures_util::stream::iter(lines));
            let aliases: Vec<(String, String)> = checked.aliases.into_iter().collect();
            (checked.provider, (upload, checked.len), aliases)
        } else {
            (
                Self::provider_for_upload(env.snap, call.caller)?.clone(),
                (reqwest::Body::from(content), len),
                Vec::new(),
            )
        };
        let part = reqwest::multipart::Part::stream_with_length(upload.0, upload.1)
            .file_name(filename)
            .mime_str("application/octet-stream")
            .map_err(|_| GwError::Internal)?;
        let form = reqwest::multipart::Form::new()
            .text("purpose", purpose)
            .part("file", part);
        let mut v = self
            .call_json(self.request(&provider, Method::POST, &["files"]).multipart(form), None)
            .await?;
        let upstream = upstream_id(&v, "file")?;
        let id = new_id("file-");
        v["id"] = json!(id);
        let rec = Record {
            kind: Kind::File,
            owner: call.caller.owner.clone(),
            provider: provider.name.clone(),
            upstream,
            created_ms: now_ms(),
            object: Some(v.clone()),
            aliases,
            input: None,
            budget: None,
        };
        if let Err(e) = self.ids.put(&id, &rec, false, Cap::Owner, keep).await {
            // Raced past `room` to the cap, or the store failed: the provider's copy has
            // no id to reach it by, so it goes.
            let p = Self::provider(env.snap, &rec)?;
            let _ = self
                .call_json(self.request(p, Method::DELETE, &["files", &rec.upstream]), None)
                .await;
            return Err(e);
        }
        Ok(v)
    }

    /// The page of `items` after the id `after`, at most `limit` long.
    fn page<T>(items: Vec<(String, T)>, after: Option<&str>, limit: usize) -> (Vec<(String, T)>, bool) {
        let start = after
            .and_then(|a| items.iter().position(|(id, _)| id == a).map(|i| i + 1))
            .unwrap_or(0);
        let mut rest: Vec<(String, T)> = items.into_iter().skip(start).collect();
        let more = rest.len() > limit;
        rest.truncate(limit);
        (rest, more)
    }

    fn limit(call: &Call<'_>, default: usize, max: usize) -> Result<usize, GwError> {
        match query_param(call.query, "limit") {
            None => Ok(default),
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| GwError::InvalidRequest(format!("'limit' must be a number from 1 to {max}."))),
        }
    }

    fn list_answer(data: Vec<Value>, more: bool) -> Value {
        let first = data.first().map(|v| v["id"].clone()).unwrap_or(Value::Null);
        let last = data.last().map(|v| v["id"].clone()).unwrap_or(Value::Null);
        json!({"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": more})
    }

    async fn list_files(&self, call: &Call<'_>, owner: &str, keep: &crate::raw::FileIds) -> Result<Value, GwError> {
        let limit = Self::limit(call, store::LIST_SCAN, store::LIST_SCAN)?;
        let purpose = query_param(call.query, "purpose");
        let mut all = self.ids.list(Kind::File, owner, keep).await?;
        if query_param(call.query, "order").as_deref() == Some("asc") {
            all.reverse();
        }
        let all: Vec<(String, Value)> = all
            .into_iter()
            .filter_map(|(id, r)| {
                let mut o = r.object?;
                o["id"] = json!(id);
                Some((id, o))
            })
            .filter(|(_, o)| purpose.as_deref().is_none_or(|p| o["purpose"] == p))
            .collect();
        let (page, more) = Self::page(all, query_param(call.query, "after").as_deref(), limit);
        Ok(Self::list_answer(page.into_iter().map(|(_, o)| o).collect(), more))
    }

    async fn create_batch(&self, env: &Env<'_>, call: &Call<'_>) -> Result<Value, GwError> {
        let mut req: Value =
            serde_json::from_slice(&call.body).map_err(|e| GwError::InvalidJson(format!("Invalid JSON: {e}")))?;
        if !req.is_object() {
            return Err(GwError::InvalidRequest("The body must be a JSON object.".into()));
        }
        let input = req["input_file_id"]
            .as_str()
            .ok_or_else(|| GwError::InvalidRequest("'input_file_id' must be a file id.".into()))?
            .to_owned();
        let endpoint = req["endpoint"].as_str().unwrap_or_default();
        if !jsonl::line_url(endpoint) {
            return Err(GwError::InvalidRequest(format!(
                "'endpoint' must be one of {}.",
                jsonl::LINE_URLS.join(", ")
            )));
        }
        let file = self
            .ids
            .owned(&input, Kind::File, &call.caller.owner, &env.snap.server.files)
            .await?;
        if file.aliases.is_empty() {
            return Err(GwError::InvalidRequest(format!(
                "The file '{input}' is not a batch input file (purpose 'batch')."
            )));
        }
        // The key creating the batch may not be the one that uploaded the file: its
        // allowlist and the current config decide.
        for (alias, _) in &file.aliases {
            let t = jsonl::batch_target(env.snap, call.caller, alias)
                .map_err(|e| GwError::InvalidRequest(format!("The batch file's {e}.")))?;
            if t.provider.name != file.provider {
                return Err(GwError::InvalidRequest(format!(
                    "The model '{alias}' is no longer served by the provider key the file was uploaded to."
                )));
            }
        }
        if let Some(b) = &call.caller.budget {
            env.budgets.admit(b, &call.caller.owner, chrono::Utc::now()).await?;
        }
        self.ids
            .room(Kind::Batch, &call.caller.owner, &env.snap.server.files)
            .await?;
        let p = Self::provider(env.snap, &file)?;
        req["input_file_id"] = json!(file.upstream);
        let v = self
            .call_json(self.request(p, Method::POST, &["batches"]).json(&req), None)
            .await?;
        let upstream = upstream_id(&v, "batch")?;
        let id = new_id("batch_");
        let rec = Record {
            kind: Kind::Batch,
            owner: call.caller.owner.clone(),
            provider: file.provider.clone(),
            upstream,
            created_ms: now_ms(),
            object: None,
            aliases: file.aliases.clone(),
            input: Some(input),
            budget: call.caller.budget.as_ref().map(|b| b.name.clone()),
        };
        if let Err(e) = self.ids.put(&id, &rec, false, Cap::Owner, &env.snap.server.files).await {
            // Raced past `room` to the cap, or the store failed: a batch nobody can see is
            // never charged, so it is cancelled at the provider.
            let _ = self
                .call_json(
                    self.request(p, Method::POST, &["batches", &rec.upstream, "cancel"]),
                    None,
                )
                .await;
            return Err(e);
        }
        self.batch_view(env, &id, &rec, v).await
    }

    /// Retrieves (or cancels) a batch at the provider and answers it in aigw's ids.
    async fn batch(
        &self,
        env: &Env<'_>,
        id: &str,
        rec: &Record,
        method: Method,
        cancel: bool,
    ) -> Result<Value, GwError> {
        let p = Self::provider(env.snap, rec)?;
        let segments: Vec<&str> = if cancel {
            vec!["batches", &rec.upstream, "cancel"]
        } else {
            vec!["batches", &rec.upstream]
        };
        let v = self.call_json(self.request(p, method, &segments), Some(id)).await?;
        self.batch_view(env, id, rec, v).await
    }

    /// The provider's batch object in aigw's ids: its own, its input file's, and each
    /// file it reports (mapped to ids of the batch's owner on first sight). A batch that
    /// ended with an output file is charged here, once.
    async fn batch_view(&self, env: &Env<'_>, id: &str, rec: &Record, mut v: Value) -> Result<Value, GwError> {
        v["id"] = json!(id);
        v["input_file_id"] = json!(rec.input);
        let ended = matches!(
            v["status"].as_str(),
            Some("completed" | "failed" | "expired" | "cancelled")
        );
        let mut output = None;
        for field in ["output_file_id", "error_file_id"] {
            // Only an ended batch's files are the caller's: its charge is made as they are
            // first shown, so none is readable before.
            let reported = v[field].as_str().filter(|s| !s.is_empty() && ended).map(str::to_owned);
            let Some(up) = reported else {
                // Anything but an ended batch's id is not the provider's to pass on.
                if !v[field].is_null() && v.get(field).is_some() {
                    v[field] = Value::Null;
                }
                continue;
            };
            let fid = derived_file_id(id, &up);
            let file = Record {
                kind: Kind::File,
                owner: rec.owner.clone(),
                provider: rec.provider.clone(),
                upstream: up.clone(),
                created_ms: now_ms(),
                object: Some(json!({
                    "id": fid,
                    "object": "file",
                    "purpose": "batch_output",
                    "filename": format!("{field}.jsonl").replace("_id", ""),
                    "created_at": chrono::Utc::now().timestamp(),
                    "bytes": null,
                })),
                aliases: Vec::new(),
                input: None,
                budget: None,
            };
            self.ids
                .put(&fid, &file, true, Cap::Exempt, &env.snap.server.files)
                .await?;
            if field == "output_file_id" {
                output = Some(up);
            }
            v[field] = json!(fid);
        }
        if let Some(up) = output {
            self.charge_once(env, id, rec, &up).await;
        }
        Ok(v)
    }

    async fn list_batches(&self, env: &Env<'_>, call: &Call<'_>, owner: &str) -> Result<Value, GwError> {
        let limit = Self::limit(call, 20, 100)?;
        let all = self.ids.list(Kind::Batch, owner, &env.snap.server.files).await?;
        let (page, more) = Self::page(all, query_param(call.query, "after").as_deref(), limit);
        let fetched = futures_util::future::join_all(
            page.iter()
                .map(|(id, rec)| self.batch(env, id, rec, Method::GET, false)),
        )
        .await;
        let mut data = Vec::with_capacity(fetched.len());
        for r in fetched {
            match r {
                Ok(v) => data.push(v),
                // Gone at the provider: not listed.
                Err(GwError::NoSuchObject(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Self::list_answer(data, more))
    }

    /// Charges a batch's usage to its owner, once across the fleet: the claim is taken
    /// before the output file is read, and marked done before the charge is made.
    async fn charge_once(&self, env: &Env<'_>, id: &str, rec: &Record, output: &str) {
        match self.ids.claim_charge(id).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(_) => return,
        }
        let usage = match self.output_usage(env.snap, rec, output).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(batch = id, error = %e, "could not read a batch's output usage; charged on a later retrieve");
                self.ids.release_charge(id).await;
                return;
            }
        };
        if self.ids.mark_charged(id, &env.snap.server.files).await.is_err() {
            return;
        }
        let mut total = 0.0;
        for (alias, u) in &usage {
            env.metrics
                .tokens
                .with_label_values(&[alias.as_str(), rec.owner.as_str(), "input"])
                .inc_by(u.input_tokens);
            env.metrics
                .tokens
                .with_label_values(&[alias.as_str(), rec.owner.as_str(), "output"])
                .inc_by(u.output_tokens);
            if let Some(p) = env.snap.models.get(alias).and_then(|m| m.pricing) {
                let usd = u.batch_cost_usd(&p);
                env.metrics
                    .cost
                    .with_label_values(&[alias.as_str(), rec.owner.as_str()])
                    .inc_by(usd);
                total += usd;
            }
        }
        let budget = rec
            .budget
            .as_ref()
            .and_then(|name| env.snap.budgets.iter().find(|b| &b.name == name));
        if let Some(b) = budget {
            env.budgets.charge_to(b, &rec.owner, chrono::Utc::now(), total).await;
        }
        tracing::info!(batch = id, owner = %rec.owner, cost_usd = total, "batch usage charged");
    }

    /// The usage of a batch's output file, by alias: each line's `response.body.usage`,
    /// read as the file streams in.
    async fn output_usage(
        &self,
        snap: &Snapshot,
        rec: &Record,
        output: &str,
    ) -> Result<BTreeMap<String, Usage>, String> {
        let p = Self::provider(snap, rec).map_err(|e| e.to_string())?;
        let mut resp = self
            .request(p, Method::GET, &["files", output, "content"])
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !resp.status().is_success() {
            return Err(format!("the provider answered {}", resp.status()));
        }
        let mut by_alias: BTreeMap<String, Usage> = BTreeMap::new();
        let mut line: Vec<u8> = Vec::new();
        let mut too_long = false;
        let mut add = |line: &[u8]| {
            let Ok(v) = serde_json::from_slice::<Value>(line) else {
                return;
            };
            let body = &v["response"]["body"];
            let Some(u) = body.get("usage").map(Usage::from_json) else {
                return;
            };
            let alias = alias_of(&rec.aliases, body["model"].as_str());
            let sum = by_alias.entry(alias.to_owned()).or_default();
            sum.input_tokens = sum.input_tokens.saturating_add(u.input_tokens);
            sum.output_tokens = sum.output_tokens.saturating_add(u.output_tokens);
            sum.cache_read_tokens = sum.cache_read_tokens.saturating_add(u.cache_read_tokens);
            sum.cache_write_tokens = sum.cache_write_tokens.saturating_add(u.cache_write_tokens);
            sum.reasoning_tokens = sum.reasoning_tokens.saturating_add(u.reasoning_tokens);
        };
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.without_url().to_string())? {
            let mut rest: &[u8] = &chunk;
            while let Some(i) = memchr::memchr(b'\n', rest) {
                if !too_long {
                    line.extend_from_slice(&rest[..i]);
                    add(&line);
                }
                line.clear();
                too_long = false;
                rest = &rest[i + 1..];
            }
            if !too_long && line.len() + rest.len() > MAX_OUTPUT_LINE {
                tracing::warn!(batch_provider = %rec.provider, "a batch output line is too long to read its usage");
                too_long = true;
                line.clear();
            }
            if !too_long {
                line.extend_from_slice(rest);
            }
        }
        if !too_long && !line.is_empty() {
            add(&line);
        }
        Ok(by_alias)
    }
}

/// The alias a batch output line is charged to: the one whose upstream model the line
/// names (exactly, or as the dated version of it: `gpt-4o-mini-2024-07-18`); else the
/// batch's first alias (a batch of one model needs no more).
fn alias_of<'a>(aliases: &'a [(String, String)], model: Option<&str>) -> &'a str {
    let m = model.unwrap_or_default();
    aliases
        .iter()
        .find(|(_, up)| up == m)
        .or_else(|| {
            aliases
                .iter()
                .filter(|(_, up)| m.starts_with(up.as_str()))
                .max_by_key(|(_, up)| up.len())
        })
        .or(aliases.first())
        .map_or("", |(a, _)| a.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = |m: Method, p: &str| route(&m, p).map(|r| r.map_err(|e| e.status()));
        assert_eq!(r(Method::POST, "/v1/files"), Some(Ok(Op::Upload)));
        assert_eq!(r(Method::GET, "/v1/files"), Some(Ok(Op::ListFiles)));
        assert_eq!(r(Method::GET, "/v1/files/f1"), Some(Ok(Op::Retrieve("f1".into()))));
        assert_eq!(r(Method::DELETE, "/v1/files/f1"), Some(Ok(Op::Delete("f1".into()))));
        assert_eq!(
            r(Method::GET, "/v1/files/f1/content"),
            Some(Ok(Op::Content("f1".into())))
        );
        assert_eq!(
            r(Method::POST, "/v1/batches/b/cancel"),
            Some(Ok(Op::Cancel("b".into())))
        );
        assert_eq!(r(Method::PUT, "/v1/batches"), Some(Err(405)));
        assert_eq!(r(Method::GET, "/v1/files//content"), None);
        assert_eq!(r(Method::GET, "/v1/files/a/b/c"), None);
        assert_eq!(r(Method::GET, "/v1/chat/completions"), None);
    }

    #[test]
    fn line_urls_are_openais_with_or_without_the_version() {
        assert!(jsonl::line_url("/v1/chat/completions") && jsonl::line_url("/chat/completions"));
        assert!(!jsonl::line_url("/v1/audio/speech") && !jsonl::line_url("/v2/chat/completions"));
        assert!(!jsonl::line_url("") && !jsonl::line_url("/v1"));
    }

    #[test]
    fn output_lines_are_charged_to_the_alias_of_their_model() {
        let a = vec![
            ("mini".to_owned(), "gpt-4o-mini".to_owned()),
            ("big".to_owned(), "gpt-4o".to_owned()),
        ];
        assert_eq!(alias_of(&a, Some("gpt-4o")), "big");
        assert_eq!(alias_of(&a, Some("gpt-4o-mini-2024-07-18")), "mini");
        assert_eq!(alias_of(&a, None), "mini");
    }

    #[test]
    fn derived_ids_agree_and_differ() {
        assert_eq!(
            derived_file_id("batch_a", "file-x"),
            derived_file_id("batch_a", "file-x")
        );
        assert_ne!(
            derived_file_id("batch_a", "file-x"),
            derived_file_id("batch_b", "file-x")
        );
    }
}
