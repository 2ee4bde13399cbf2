//! Built-in detectors for `kind: pii`: one or more linear-time regexes per type, some with a
//! check a regex cannot express (a Luhn or mod-97 checksum, a valid IPv6 address).
//!
//! Patterns use ASCII classes and ASCII word boundaries (`(?-u:\b)`) so the regex crate
//! can run them on its lazy DFA, and bounded repetitions where the format allows, so a
//! stream holds back as little as a match in progress needs (see `live.rs`).

use crate::raw::PiiType;

/// A check on a regex match, applied before it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    None,
    /// Payment card: 13 to 19 digits passing the Luhn checksum.
    Luhn,
    /// US SSN: area not 000, 666 or 9xx; group not 00; serial not 0000.
    Ssn,
    /// IBAN: the ISO 13616 mod-97 checksum.
    Iban,
    /// A real IPv6 address, not glued to other hex digits or colons.
    Ipv6,
    /// Not preceded by a digit or letter (a phone number inside a longer number is not one).
    NotInsideWord,
}

/// The label in `[REDACTED:<label>]` for a PII type.
pub fn label(t: PiiType) -> &'static str {
    match t {
        PiiType::Email => "email",
        PiiType::CreditCard => "credit_card",
        PiiType::UsSsn => "us_ssn",
        PiiType::Phone => "phone",
        PiiType::Ipv4 => "ipv4",
        PiiType::Ipv6 => "ipv6",
        PiiType::Iban => "iban",
        PiiType::ApiKey => "api_key",
        PiiType::Jwt => "jwt",
        PiiType::PrivateKey => "private_key",
    }
}

const OCTET: &str = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";

/// The patterns that detect one PII type.
pub fn patterns(t: PiiType) -> Vec<(String, Check)> {
    let p = |s: &str, c: Check| (s.to_owned(), c);
    match t {
        PiiType::Email => vec![p(
            r"(?-u:\b)[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?){0,3}\.[A-Za-z]{2,24}(?-u:\b)",
            Check::None,
        )],
        PiiType::CreditCard => vec![p(r"(?-u:\b)[0-9](?:[ -]?[0-9]){12,18}(?-u:\b)", Check::Luhn)],
        PiiType::UsSsn => vec![p(r"(?-u:\b)[0-9]{3}-[0-9]{2}-[0-9]{4}(?-u:\b)", Check::Ssn)],
        PiiType::Phone => vec![
            // North American and similar: 555-123-4567, (555) 123 4567, +1 555.123.4567.
            p(
                r"(?:\+[0-9]{1,3}[ .-]?)?(?:\([0-9]{3}\) ?|[0-9]{3}[ .-]?)[0-9]{3}[ .-]?[0-9]{4}(?-u:\b)",
                Check::NotInsideWord,
            ),
            // E.164 and international forms: +44 20 7946 0958, +4915112345678.
            p(
                r"\+[1-9][0-9]{0,2}(?:[ .-]?[0-9]{2,4}){2,4}(?-u:\b)",
                Check::NotInsideWord,
            ),
        ],
        PiiType::Ipv4 => vec![p(
            &format!(r"(?-u:\b){OCTET}\.{OCTET}\.{OCTET}\.{OCTET}(?-u:\b)"),
            Check::None,
        )],
        PiiType::Ipv6 => vec![p(r"(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}", Check::Ipv6)],
        PiiType::Iban => vec![p(
            r"(?-u:\b)[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?-u:\b)",
            Check::Iban,
        )],
        PiiType::ApiKey => vec![
            // Anthropic, then OpenAI (project, service account, admin and legacy keys).
            p(r"(?-u:\b)sk-ant-[A-Za-z0-9_-]{20,200}", Check::None),
            p(
                r"(?-u:\b)sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,200}",
                Check::None,
            ),
            // AWS access key ids.
            p(r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}(?-u:\b)", Check::None),
            // GitHub tokens and fine-grained PATs, GitLab PATs.
            p(r"(?-u:\b)gh[pousr]_[A-Za-z0-9]{36,255}", Check::None),
            p(r"(?-u:\b)github_pat_[A-Za-z0-9_]{22,255}", Check::None),
            p(r"(?-u:\b)glpat-[A-Za-z0-9_-]{20,50}", Check::None),
            // Google API keys, Slack tokens, Stripe secret and restricted keys, Hugging Face.
            p(r"(?-u:\b)AIza[0-9A-Za-z_-]{35}", Check::None),
            p(r"(?-u:\b)xox[abposr]-[A-Za-z0-9-]{10,72}", Check::None),
            p(r"(?-u:\b)(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,99}", Check::None),
            p(r"(?-u:\b)hf_[A-Za-z0-9]{34,40}(?-u:\b)", Check::None),
        ],
        PiiType::Jwt => vec![p(
            r"(?-u:\b)eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{8,}",
            Check::None,
        )],
        // The header, the base64 body, and the footer when it is there: a key that is still
        // streaming is held back (its match touches the end) until it stops growing.
        PiiType::PrivateKey => vec![p(
            r"-----BEGIN[A-Z0-9 ]{0,24} PRIVATE KEY-----[A-Za-z0-9+/=\r\n]*(?:-----END[A-Z0-9 ]{0,24} PRIVATE KEY-----)?",
            Check::None,
        )],
    }
}

/// Whether a regex match at `range` of `hay` passes the type's extra check.
pub fn passes(check: Check, hay: &str, start: usize, end: usize) -> bool {
    let m = &hay[start..end];
    match check {
        Check::None => true,
        Check::Luhn => luhn(m),
        Check::Ssn => ssn(m),
        Check::Iban => iban(m),
        Check::Ipv6 => {
            let glued = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == ':' || c == '_');
            !glued(hay[..start].chars().next_back())
                && !glued(hay[end..].chars().next())
                && m.bytes().any(|b| b.is_ascii_hexdigit())
                && m.parse::<std::net::Ipv6Addr>().is_ok()
        }
        Check::NotInsideWord => !hay[..start]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '+'),
    }
}

fn luhn(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 {
                    d2 - 9
                } else {
                    d2
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

fn ssn(s: &str) -> bool {
    let mut parts = s.split('-');
    let (Some(area), Some(group), Some(serial)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

fn iban(s: &str) -> bool {
    let compact: Vec<u8> = s.bytes().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    // Move the country code and check digits to the end; letters count as 10..35.
    let rotated = compact[4..].iter().chain(&compact[..4]);
    let mut rem: u32 = 0;
    for &b in rotated {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums() {
        assert!(luhn("4111 1111 1111 1111"));
        assert!(luhn("5500-0000-0000-0004"));
        assert!(!luhn("4111 1111 1111 1112"));
        assert!(!luhn("1234"));
        assert!(iban("DE89 3704 0044 0532 0130 00"));
        assert!(iban("GB82WEST12345698765432"));
        assert!(!iban("GB82WEST12345698765431"));
        assert!(ssn("123-45-6789"));
        assert!(!ssn("000-45-6789") && !ssn("666-45-6789") && !ssn("900-45-6789"));
        assert!(!ssn("123-00-6789") && !ssn("123-45-0000"));
    }

    #[test]
    fn ipv6_check_needs_a_real_address() {
        let ok = |s: &str| passes(Check::Ipv6, s, 0, s.len());
        assert!(ok("2001:db8::1"));
        assert!(ok("fe80::1ff:fe23:4567:890a"));
        assert!(!ok("10:30:00"));
        assert!(!ok("::"));
        let hay = "x2001:db8::1";
        assert!(!passes(Check::Ipv6, hay, 1, hay.len()));
    }
}
