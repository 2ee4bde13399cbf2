//! Where entries live: a moka cache per policy (bounded by `max_entries` and by
//! `max_bytes`, expiring after `ttl_s`), or Redis (`SET ... EX ttl_s`, shared by every instance), values over 1 KiB
//! compressed with LZ4.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::raw::{self, CacheBackend};
use crate::redis_pool::{RedisPool, Unavailable};

/// A stored completion: the concrete model that answered, and the JSON completion in the
/// caller's dialect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub model: String,
    pub body: Bytes,
}

/// What an entry costs beyond its body: key, `Arc`, moka's bookkeeping (approximate).
const ENTRY_OVERHEAD: usize = 128;

/// Bodies at least this large are compressed in Redis.
const COMPRESS_FROM: usize = 1024;
const FORMAT: u8 = 1;

enum Backend {
    Memory(moka::sync::Cache<[u8; 32], Arc<Entry>>),
    Redis(Arc<RedisPool>),
}

pub struct Store {
    pub policy: Arc<raw::Cache>,
    backend: Backend,
}

impl Store {
    /// `None` for a Redis policy when the process has no Redis (it was added to the config
    /// after start: `server.redis` takes a restart).
    pub fn new(policy: Arc<raw::Cache>, redis: Option<&Arc<RedisPool>>) -> Option<Self> {
        let backend = match policy.backend {
            CacheBackend::Memory => {
                // Bounded by bytes and by count at once: moka weighs entries against one
                // capacity, so each entry weighs its size, but at least an equal share of
                // `max_bytes` (then no more than `max_entries` fit).
                let share = (policy.max_bytes / policy.max_entries.max(1)).max(1);
                Backend::Memory(
                    moka::sync::Cache::builder()
                        .max_capacity(policy.max_bytes)
                        .weigher(move |_k, e: &Arc<Entry>| {
                            let size = (e.body.len() + e.model.len() + ENTRY_OVERHEAD) as u64;
                            u32::try_from(size.max(share)).unwrap_or(u32::MAX)
                        })
                        .time_to_live(Duration::from_secs(policy.ttl_s))
                        .build(),
                )
            }
            CacheBackend::Redis => Backend::Redis(redis?.clone()),
        };
        Some(Self { policy, backend })
    }

    /// Whether this store was built for these settings (else a reload rebuilds it).
    pub fn fits(&self, p: &raw::Cache) -> bool {
        let q = &self.policy;
        (
            q.ttl_s,
            q.max_entries,
            q.max_bytes,
            q.max_entry_bytes,
            q.backend,
            q.scope,
        ) == (
            p.ttl_s,
            p.max_entries,
            p.max_bytes,
            p.max_entry_bytes,
            p.backend,
            p.scope,
        )
    }

    fn redis_key(&self, key: &[u8; 32]) -> String {
        format!("aigw:cache:{}:{}", self.policy.name, blake3::Hash::from(*key).to_hex())
    }

    pub async fn get(&self, key: &[u8; 32]) -> Result<Option<Arc<Entry>>, Unavailable> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.get(key)),
            Backend::Redis(pool) => {
                let k = self.redis_key(key);
                let raw: Option<Vec<u8>> = pool
                    .call(|mut c| async move { redis::cmd("GET").arg(&k).query_async(&mut c).await })
                    .await?;
                // An entry that does not decode (another version wrote it) is a miss.
                Ok(raw.and_then(|r| decode(&r)).map(Arc::new))
            }
        }
    }

    /// Stores an entry; one over `max_entry_bytes` is not stored.
    pub async fn put(&self, key: [u8; 32], entry: Entry) -> Result<(), Unavailable> {
        if entry.body.len() as u64 > self.policy.max_entry_bytes {
            return Ok(());
        }
        match &self.backend {
            Backend::Memory(m) => {
                m.insert(key, Arc::new(entry));
                Ok(())
            }
            Backend::Redis(pool) => {
                let k = self.redis_key(&key);
                let v = encode(&entry);
                let ttl = self.policy.ttl_s;
                pool.call(|mut c| async move {
                    redis::cmd("SET")
                        .arg(&k)
                        .arg(v)
                        .arg("EX")
                        .arg(ttl)
                        .query_async::<()>(&mut c)
                        .await
                })
                .await
            }
        }
    }
}

/// `[format][compressed][model length, 2 bytes][model][body]`.
fn encode(e: &Entry) -> Vec<u8> {
    let model = e.model.as_bytes();
    let model_len = model.len().min(u16::MAX as usize);
    let compress = e.body.len() >= COMPRESS_FROM;
    let body = if compress {
        lz4_flex::compress_prepend_size(&e.body)
    } else {
        e.body.to_vec()
    };
    let mut out = Vec::with_capacity(4 + model_len + body.len());
    out.push(FORMAT);
    out.push(u8::from(compress));
    out.extend_from_slice(&(model_len as u16).to_be_bytes());
    out.extend_from_slice(&model[..model_len]);
    out.extend_from_slice(&body);
    out
}

fn decode(raw: &[u8]) -> Option<Entry> {
    let (&[format, compressed, a, b], rest) = raw.split_first_chunk::<4>()?;
    if format != FORMAT {
        return None;
    }
    let len = u16::from_be_bytes([a, b]) as usize;
    let model = std::str::from_utf8(rest.get(..len)?).ok()?.to_owned();
    let body = &rest[len..];
    let body = match compressed {
        0 => Bytes::copy_from_slice(body),
        1 => Bytes::from(lz4_flex::decompress_size_prepended(body).ok()?),
        _ => return None,
    };
    Some(Entry { model, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_compresses_large_bodies() {
        let small = Entry {
            model: "gpt".into(),
            body: Bytes::from_static(b"{\"a\":1}"),
        };
        assert_eq!(decode(&encode(&small)).unwrap(), small);
        let big = Entry {
            model: "claude".into(),
            body: Bytes::from("{\"text\":\"".to_owned() + &"hello ".repeat(1000) + "\"}"),
        };
        let enc = encode(&big);
        assert!(enc.len() < big.body.len() / 4, "{} bytes", enc.len());
        assert_eq!(decode(&enc).unwrap(), big);
        assert!(decode(b"").is_none() && decode(&[9, 0, 0, 0]).is_none() && decode(&[1, 1, 0, 0, 1]).is_none());
    }

    fn memory(max_entries: u64, max_bytes: u64, max_entry_bytes: u64) -> Store {
        let policy = Arc::new(raw::Cache {
            name: "c".into(),
            ttl_s: 300,
            max_entries,
            max_bytes,
            max_entry_bytes,
            backend: CacheBackend::Memory,
            scope: raw::CacheScope::Owner,
        });
        Store::new(policy, None).unwrap()
    }

    fn weighed(s: &Store) -> (u64, u64) {
        let Backend::Memory(m) = &s.backend else { unreachable!() };
        m.run_pending_tasks();
        (m.weighted_size(), m.entry_count())
    }

    #[tokio::test]
    async fn memory_is_bounded_by_bytes_and_by_count() {
        // 20 answers of 200 KB under a 1 MiB budget: about 5 stay, not 20 (4 MB).
        let s = memory(1000, 1 << 20, 1 << 20);
        for i in 0..20u8 {
            let e = Entry {
                model: "m".into(),
                body: Bytes::from(vec![b'x'; 200_000]),
            };
            s.put([i; 32], e).await.unwrap();
        }
        let (bytes, count) = weighed(&s);
        assert!(bytes <= 1 << 20 && count <= 5, "{bytes} bytes in {count} entries");
        // Small entries are bounded by the count.
        let s = memory(10, 1 << 20, 1 << 20);
        for i in 0..50u8 {
            let e = Entry {
                model: "m".into(),
                body: Bytes::from_static(b"{}"),
            };
            s.put([i; 32], e).await.unwrap();
        }
        assert!(weighed(&s).1 <= 10, "{:?}", weighed(&s));
        // An answer over max_entry_bytes is not stored.
        let s = memory(10, 1 << 20, 1000);
        let e = Entry {
            model: "m".into(),
            body: Bytes::from(vec![b'x'; 2000]),
        };
        s.put([1; 32], e).await.unwrap();
        assert!(s.get(&[1; 32]).await.unwrap().is_none());
    }
}
