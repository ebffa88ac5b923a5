//! `MASKING_KEY`: the key of every pseudonym. Keyed rules (`hash`, `email`, the fakes,
//! `ip`, `date_shift`) need it, so that every attempt of a run and every night give the same
//! pseudonyms (joins across tables loaded by two attempts hold), and it must be strong: a
//! pseudonym is only as hard to reverse as the key is to guess.

use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// The least strength of a key, in bits.
pub const MIN_KEY_BITS: usize = 128;

/// The key of every pseudonym. Its `Debug` prints nothing of it.
#[derive(Clone)]
pub struct MaskingKey([u8; 32]);

impl std::fmt::Debug for MaskingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MaskingKey([redacted])")
    }
}

impl MaskingKey {
    /// From `MASKING_KEY` (any length: it is hashed), unchecked.
    pub fn from_secret(secret: &Secret) -> MaskingKey {
        MaskingKey(Sha256::digest(secret.expose().as_bytes()).into())
    }

    /// From `MASKING_KEY`, refused when weaker than [`MIN_KEY_BITS`]: hex digits count 4 bits
    /// each (32 of them at least), base64 characters 6 (22 at least), anything else 6. The
    /// error never holds the key.
    pub fn parse(secret: &Secret) -> Result<MaskingKey, String> {
        let bits = estimated_bits(secret.expose());
        if bits < MIN_KEY_BITS {
            return Err(format!(
                "a key of at least {MIN_KEY_BITS} bits (this one holds about {bits}: at least 32 hex digits or 22 base64 characters, drawn at random); `replicator rules key` prints a fresh one"
            ));
        }
        Ok(MaskingKey::from_secret(secret))
    }

    /// A key of this run only, for rules that use none (it is never used for a pseudonym).
    pub fn random() -> MaskingKey {
        MaskingKey(random_bytes())
    }

    /// A fresh strong key, as `replicator rules key` prints it: 256 random bits in hex.
    pub fn generate() -> String {
        random_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// 32 bytes from the kernel's generator (`/dev/urandom`).
fn random_bytes() -> [u8; 32] {
    use std::io::Read;
    let mut k = [0u8; 32];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut k));
    if read.is_err() {
        // No /dev/urandom: the clock, the pid and the stack's address still make a key
        // nobody knows in advance.
        let seed = format!(
            "{:?}{}{:p}",
            std::time::SystemTime::now(),
            std::process::id(),
            &k
        );
        k = Sha256::digest(seed.as_bytes()).into();
    }
    k
}

/// The strength of `key` as its alphabet tells it: hex 4 bits a character, base64 (standard or
/// URL-safe, padding not counted) and anything else 6.
fn estimated_bits(key: &str) -> usize {
    if !key.is_empty() && key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return key.len() * 4;
    }
    key.trim_end_matches('=').chars().count() * 6
}

/// The key a run with `rules` uses: `MASKING_KEY` checked, `None` when the rules need no key
/// and none is set. A run whose rules are keyed without a key is refused: each attempt would
/// draw its own, and a table loaded by one attempt would not join one loaded by the next.
pub fn run_key(
    rules: Option<&super::RulesFile>,
    key: Option<&str>,
) -> Result<Option<MaskingKey>, String> {
    match key.filter(|k| !k.is_empty()) {
        Some(k) => MaskingKey::parse(&Secret::new(k)).map(Some),
        None => {
            let keyed = rules.map(super::keyed_rules).unwrap_or_default();
            if keyed.is_empty() {
                return Ok(None);
            }
            Err(format!(
                "REPLICA_RULES has keyed rules ({}{}), which need MASKING_KEY: set it to a key of at least {MIN_KEY_BITS} bits (`replicator rules key` prints one) and keep it; without it, every attempt and every night would draw other pseudonyms, and tables loaded by two attempts would not join",
                keyed.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                if keyed.len() > 5 {
                    format!(" and {} more", keyed.len() - 5)
                } else {
                    String::new()
                }
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masking::RulesFile;

    #[test]
    fn weak_keys_are_refused_without_being_shown() {
        for weak in [
            "masking-key-5b1f0c7e",
            "0123456789abcdef0123456789abcde",
            "AAAAAAAAAAAAAAAAAAAAA",
            "hunter2",
        ] {
            let e = MaskingKey::parse(&Secret::new(weak)).unwrap_err();
            assert!(!e.contains(weak), "{e}");
            assert!(e.contains("128 bits") && e.contains("rules key"), "{e}");
        }
        for strong in [
            "0123456789abcdef0123456789abcdef",
            "q83vEjRWeJq83vEjRWeJq8",
            "q83vEjRWeJq83vEjRWeJq8==",
        ] {
            assert!(MaskingKey::parse(&Secret::new(strong)).is_ok(), "{strong}");
        }
        let k = MaskingKey::generate();
        assert_eq!(k.len(), 64);
        assert!(MaskingKey::parse(&Secret::new(&k)).is_ok());
        assert_ne!(k, MaskingKey::generate());
    }

    #[test]
    fn keyed_rules_need_a_key_the_others_do_not() {
        let keyed = RulesFile::parse("[tables.users.columns]\nemail = \"hash\"\n").unwrap();
        let e = run_key(Some(&keyed), None).unwrap_err();
        assert!(
            e.contains("users.email (hash)") && e.contains("MASKING_KEY"),
            "{e}"
        );
        assert!(run_key(Some(&keyed), Some("")).is_err());
        let strong = "0123456789abcdef0123456789abcdef";
        assert!(run_key(Some(&keyed), Some(strong)).unwrap().is_some());
        let plain = RulesFile::parse("[tables.users.columns]\nnotes = \"null\"\n").unwrap();
        assert!(run_key(Some(&plain), None).unwrap().is_none());
        assert!(run_key(None, None).unwrap().is_none());
        assert!(run_key(None, Some("weak")).is_err(), "a key set is checked");
    }
}
