//! MCP messages parsed within a memory budget. A JSON value in memory can be far larger
//! than its text: serde_json holds every object in a B-tree whose first node takes about
//! 640 bytes, so `{"a":0}` (7 bytes) costs about a hundred times its size, and a 4 MiB
//! answer of small objects several hundred MiB. The byte bound on an answer does not bound
//! that; this parse charges an estimate of what each value allocates (at least what
//! serde_json takes) against a budget, and stops with an error the moment it is spent,
//! before the memory is taken.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// What one value takes besides what it holds (`size_of::<Value>()`).
const VALUE: usize = 32;
/// An object's first B-tree node (11 keys and values, and the node's header).
const OBJECT: usize = 640;
/// Each entry of an object: its share of further nodes (half full at worst), and the key.
const ENTRY: usize = 112;

/// Memory a parse may take per byte of the bound on what is read. Text takes about one
/// byte per byte; ordinary tool lists (small objects, short strings) about 30, so at the
/// default 4 MiB bound a list of up to about 2 MiB of them fits.
const MEMORY_PER_BYTE: usize = 16;
/// The least budget: a small message of small objects takes more than 16 times its size.
const MEMORY_FLOOR: usize = 4 << 20;

/// The memory budget of what is bounded to `bytes` bytes: a message, or an answer.
pub fn budget(bytes: usize) -> usize {
    MEMORY_PER_BYTE.saturating_mul(bytes).max(MEMORY_FLOOR)
}

/// Why a message could not be taken.
#[derive(Debug)]
pub enum Refused {
    /// Not JSON.
    Invalid,
    /// Held in memory, it would take more than the budget left.
    TooLarge,
}

/// Parses `bytes` into a value, charging what it allocates to `budget` (bytes of memory
/// left, shared by every parse of one answer or list).
pub fn parse(bytes: &[u8], budget: &mut usize) -> Result<Value, Refused> {
    let left = Budget {
        left: Cell::new(*budget),
        spent: Cell::new(false),
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Budgeted(&left).deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    *budget = left.left.get();
    parsed.map_err(|_| match left.spent.get() {
        true => Refused::TooLarge,
        false => Refused::Invalid,
    })
}

struct Budget {
    left: Cell<usize>,
    /// Set when a charge did not fit: tells a spent budget from bad JSON.
    spent: Cell<bool>,
}

/// A seed that builds a [`Value`] and charges it to the budget.
struct Budgeted<'a>(&'a Budget);

impl Budgeted<'_> {
    fn charge<E: de::Error>(&self, n: usize) -> Result<(), E> {
        match self.0.left.get().checked_sub(n) {
            Some(left) => {
                self.0.left.set(left);
                Ok(())
            }
            None => {
                self.0.left.set(0);
                self.0.spent.set(true);
                Err(E::custom("the message is too large to hold"))
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for Budgeted<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Budgeted<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.charge(VALUE)?;
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.charge(VALUE)?;
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.charge(VALUE)?;
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.charge(VALUE)?;
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.charge(VALUE + v.len())?;
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.charge(VALUE + v.len())?;
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.charge(VALUE)?;
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.charge(VALUE)?;
        let mut out = Vec::new();
        while let Some(x) = seq.next_element_seed(Budgeted(self.0))? {
            // A growing vector may hold twice the slots it uses.
            self.charge(VALUE)?;
            out.push(x);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.charge(VALUE + OBJECT)?;
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            self.charge(ENTRY + k.len())?;
            let x = map.next_value_seed(Budgeted(self.0))?;
            out.insert(k, x);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_as_serde_json_parses_them() {
        let text = br#"{"a": [1, -2, 2.5, "s", null, true, {"b": {}}], "c": "\u00e9"}"#;
        let mut budget = 1 << 20;
        let v = parse(text, &mut budget).unwrap();
        assert_eq!(v, serde_json::from_slice::<Value>(text).unwrap());
        assert!(budget < 1 << 20, "the parse was charged");
        assert!(matches!(parse(b"{\"a\": ", &mut budget), Err(Refused::Invalid)));
        assert!(matches!(parse(b"{} x", &mut budget), Err(Refused::Invalid)));
    }

    /// The budget bounds memory, not bytes: a few KiB of small objects are refused where
    /// the same bytes of text are taken.
    #[test]
    fn small_objects_spend_the_budget_long_before_text_does() {
        let objects = format!("[{}{{}}]", "{\"a\":0},".repeat(1000));
        let text = format!("[\"{}\"]", "a".repeat(objects.len()));
        let budget = 64 * objects.len();
        assert!(matches!(
            parse(objects.as_bytes(), &mut budget.clone()),
            Err(Refused::TooLarge)
        ));
        assert!(parse(text.as_bytes(), &mut budget.clone()).is_ok());
        // Spent across parses: one budget for every page of a list.
        let mut shared = 3 * (VALUE * 2 + VALUE + 100);
        assert!(parse(format!("[\"{}\"]", "x".repeat(100)).as_bytes(), &mut shared).is_ok());
        assert!(parse(format!("[\"{}\"]", "x".repeat(100)).as_bytes(), &mut shared).is_ok());
        assert!(parse(format!("[\"{}\"]", "x".repeat(100)).as_bytes(), &mut shared).is_ok());
        assert!(matches!(parse(b"[\"x\"]", &mut shared), Err(Refused::TooLarge)));
    }
}
