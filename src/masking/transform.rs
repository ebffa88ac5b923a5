//! The plan applied to `COPY` rows (text format: tab-separated fields, `\N` for NULL, backslash
//! escapes), chunk by chunk of whole lines, on their way to the target.
//!
//! Every pseudonym is a keyed function of the value alone (HMAC-SHA-256 under the
//! [`MaskingKey`]): equal inputs give equal outputs in every table and column, so joins keep
//! working, and a run with the same key gives the same replica.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::filter::{Decision, KeepTest};
use super::validate::{Plan, TablePlan, TypeClass};
use super::{Keep, Rule};

type HmacSha256 = Hmac<Sha256>;

pub use super::key::MaskingKey;
pub use crate::machine::MaskingCounts;

/// The plan and the key, for a run's restore; counts what it does.
pub struct Masker {
    plan: Plan,
    mac: HmacSha256,
    /// Rows older than this are dropped by `newer_than` filters.
    now: DateTime<Utc>,
    counts: Mutex<MaskingCounts>,
}

impl Masker {
    pub fn new(plan: Plan, key: &MaskingKey, now: DateTime<Utc>) -> Masker {
        Masker {
            plan,
            mac: <HmacSha256 as KeyInit>::new_from_slice(key.bytes()).expect("HMAC takes any key"),
            now,
            counts: Mutex::new(MaskingCounts::default()),
        }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn counts(&self) -> MaskingCounts {
        self.counts.lock().expect("counts lock").clone()
    }

    /// The transform of the rows of `schema.table`'s `COPY` statement `copy`, if the plan
    /// changes them. `Err`: a masked or filtered column the statement does not list.
    pub fn for_copy(
        &self,
        schema: &str,
        table: &str,
        copy: &str,
    ) -> Result<Option<Rows<'_>>, String> {
        let Some(tp) = self.plan.table(schema, table) else {
            return Ok(None);
        };
        let columns = copy_columns(copy).ok_or_else(|| {
            format!("cannot read the column list of {schema}.{table}'s COPY statement")
        })?;
        let index = |name: &str| {
            columns.iter().position(|c| c == name).ok_or_else(|| {
                format!("column {name:?} of {schema}.{table} is not in its COPY statement")
            })
        };
        let mut actions: Vec<Option<Action>> = vec![None; columns.len()];
        for (col, (rule, class)) in &tp.columns {
            let i = index(col)?;
            actions[i] = Some(Action::new(rule, *class));
        }
        let filter = match &tp.filter {
            Some((col, keep, class)) => Some((index(col)?, self.keep_test(keep, *class))),
            None => None,
        };
        Ok(Some(Rows {
            masker: self,
            table: if schema == "public" {
                table.to_string()
            } else {
                format!("{schema}.{table}")
            },
            actions,
            filter,
            rewritten: BTreeMap::new(),
            dropped: 0,
            unreadable: 0,
            _tp: std::marker::PhantomData,
        }))
    }

    fn keep_test(&self, keep: &Keep, class: TypeClass) -> KeepTest {
        match keep {
            Keep::In(values) => {
                KeepTest::In(values.iter().map(|v| v.as_bytes().to_vec()).collect())
            }
            Keep::NewerThan(d) => {
                let cutoff = self.now - ChronoDuration::from_std(*d).unwrap_or(ChronoDuration::MAX);
                KeepTest::NewerThan(cutoff, class)
            }
        }
    }

    fn digest(&self, domain: &[u8], value: &[u8]) -> [u8; 32] {
        let mut m = self.mac.clone();
        m.update(domain);
        m.update(&[0]);
        m.update(value);
        m.finalize().into_bytes().into()
    }

    fn seed(&self, domain: &[u8], value: &[u8]) -> u64 {
        let d = self.digest(domain, value);
        u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
    }

    /// The new value of a non-NULL `value` (decoded) under `action`, COPY-encoded into `out`;
    /// `false` when the value is left as it was.
    fn rewrite(&self, action: &Action, value: &[u8], out: &mut Vec<u8>) -> bool {
        match &action.rule {
            Rule::Keep => false,
            Rule::Null => {
                out.extend_from_slice(b"\\N");
                true
            }
            Rule::Fixed(v) => {
                encode(v.as_bytes(), out);
                true
            }
            Rule::Redact => {
                out.extend_from_slice(redacted(action.class).as_bytes());
                true
            }
            Rule::Hash => {
                self.hash(action.class, value, out);
                true
            }
            Rule::Email => {
                let first = pick(FIRST_NAMES, self.seed(b"first_name", value)).to_ascii_lowercase();
                let d = self.digest(b"email", value);
                out.extend_from_slice(
                    format!("{first}.{}@example.invalid", hex(&d[..8])).as_bytes(),
                );
                true
            }
            Rule::FirstName => {
                out.extend_from_slice(
                    pick(FIRST_NAMES, self.seed(b"first_name", value)).as_bytes(),
                );
                true
            }
            Rule::LastName => {
                out.extend_from_slice(pick(LAST_NAMES, self.seed(b"last_name", value)).as_bytes());
                true
            }
            Rule::Phone => {
                let n = self.seed(b"phone", value) % 100_000_000;
                let d = format!("{n:08}");
                out.extend_from_slice(
                    format!("+33 6 {} {} {} {}", &d[0..2], &d[2..4], &d[4..6], &d[6..8]).as_bytes(),
                );
                true
            }
            Rule::Ip => {
                let d = self.digest(b"ip", value);
                let suffix = if action.class == TypeClass::Cidr {
                    "/32"
                } else {
                    ""
                };
                out.extend_from_slice(format!("10.{}.{}.{}{suffix}", d[0], d[1], d[2]).as_bytes());
                true
            }
            Rule::DateShift { days } => match shift_date(value, self, *days) {
                Some(v) => {
                    out.extend_from_slice(v.as_bytes());
                    true
                }
                None => false,
            },
        }
    }

    fn hash(&self, class: TypeClass, value: &[u8], out: &mut Vec<u8>) {
        match class {
            TypeClass::Int { bits } => {
                let text = std::str::from_utf8(value).unwrap_or("");
                match text.trim().parse::<i64>() {
                    Ok(n) => out.extend_from_slice(self.permute(n, bits).to_string().as_bytes()),
                    Err(_) => encode(value, out),
                }
            }
            TypeClass::Uuid => {
                let mut d = self.digest(b"uuid", value);
                d[6] = (d[6] & 0x0f) | 0x40;
                d[8] = (d[8] & 0x3f) | 0x80;
                let h = hex(&d[..16]);
                out.extend_from_slice(
                    format!(
                        "{}-{}-{}-{}-{}",
                        &h[0..8],
                        &h[8..12],
                        &h[12..16],
                        &h[16..20],
                        &h[20..32]
                    )
                    .as_bytes(),
                );
            }
            TypeClass::Json => {
                let d = self.digest(b"hash", value);
                out.extend_from_slice(format!("\"{}\"", hex(&d[..16])).as_bytes());
            }
            _ => {
                let d = self.digest(b"hash", value);
                let h = hex(&d[..16]);
                let fits_email = !matches!(class, TypeClass::Text { max: Some(m) } if m < 48);
                if fits_email && value.contains(&b'@') {
                    out.extend_from_slice(format!("{h}@example.invalid").as_bytes());
                } else {
                    out.extend_from_slice(h.as_bytes());
                }
            }
        }
    }

    /// A keyed bijection of the `bits`-bit integers (a 4-round Feistel network): distinct
    /// inputs stay distinct, and every output fits the type.
    fn permute(&self, n: i64, bits: u32) -> i64 {
        let half = bits / 2;
        let mask = if half == 64 {
            u64::MAX
        } else {
            (1u64 << half) - 1
        };
        let x = (n as u64)
            & if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
        let (mut l, mut r) = ((x >> half) & mask, x & mask);
        for round in 0u8..4 {
            let f = self.seed(&[b'i', bits as u8, round], &r.to_le_bytes()) & mask;
            (l, r) = (r, l ^ f);
        }
        let y = (l << half) | r;
        // Sign-extended from `bits`.
        let shift = 64 - bits;
        ((y << shift) as i64) >> shift
    }
}

#[derive(Clone)]
struct Action {
    rule: Rule,
    class: TypeClass,
}

impl Action {
    fn new(rule: &Rule, class: TypeClass) -> Action {
        Action {
            rule: rule.clone(),
            class,
        }
    }
}

/// The transform of one `COPY`'s rows.
pub struct Rows<'a> {
    masker: &'a Masker,
    table: String,
    actions: Vec<Option<Action>>,
    filter: Option<(usize, KeepTest)>,
    /// Rule name -> values rewritten.
    rewritten: BTreeMap<&'static str, u64>,
    dropped: u64,
    /// Of `dropped`, the rows whose value the filter could not read.
    unreadable: u64,
    _tp: std::marker::PhantomData<&'a TablePlan>,
}

impl Rows<'_> {
    /// Transforms `chunk` (whole lines, each ending with `\n`) into `out`.
    pub fn apply(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut fields: Vec<&[u8]> = Vec::with_capacity(self.actions.len());
        for line in chunk.split_inclusive(|b| *b == b'\n') {
            let body = line.strip_suffix(b"\n").unwrap_or(line);
            fields.clear();
            fields.extend(body.split(|b| *b == b'\t'));
            if let Some((i, test)) = &self.filter {
                let v = fields.get(*i).and_then(|f| decode(f));
                match test.decide(v.as_deref()) {
                    Decision::Keep => {}
                    Decision::Drop => {
                        self.dropped += 1;
                        continue;
                    }
                    Decision::Unreadable => {
                        self.dropped += 1;
                        self.unreadable += 1;
                        continue;
                    }
                }
            }
            for (i, f) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(b'\t');
                }
                let Some(action) = self.actions.get(i).and_then(Option::as_ref) else {
                    out.extend_from_slice(f);
                    continue;
                };
                let value = decode(f);
                let changed = match (&value, &action.rule) {
                    (_, Rule::Fixed(_)) | (Some(_), _) => {
                        let start = out.len();
                        let v = value.as_deref().unwrap_or(b"");
                        let changed = self.masker.rewrite(action, v, out);
                        if !changed {
                            out.truncate(start);
                            out.extend_from_slice(f);
                        }
                        changed
                    }
                    (None, _) => {
                        out.extend_from_slice(f);
                        false
                    }
                };
                if changed {
                    *self.rewritten.entry(action.rule.name()).or_default() += 1;
                }
            }
            out.push(b'\n');
        }
    }

    /// Adds this `COPY`'s counts to the run's.
    pub fn finish(self) {
        let mut c = self.masker.counts.lock().expect("counts lock");
        for (rule, n) in self.rewritten {
            *c.rewritten.entry(rule.to_string()).or_default() += n;
        }
        if self.filter.is_some() {
            if self.unreadable > 0 {
                *c.unreadable.entry(self.table.clone()).or_default() += self.unreadable;
            }
            *c.dropped.entry(self.table).or_default() += self.dropped;
        }
    }
}

/// The columns of `COPY schema.table (a, "B", c) FROM stdin;`, unquoted.
pub fn copy_columns(copy: &str) -> Option<Vec<String>> {
    let open = copy.find(" (")?;
    let mut rest = &copy[open + 2..];
    let mut cols = Vec::new();
    loop {
        let (name, r) = super::schema::ident(rest.trim_start())?;
        cols.push(name);
        let r = r.trim_start();
        if let Some(r) = r.strip_prefix(',') {
            rest = r;
        } else if r.starts_with(')') {
            return Some(cols);
        } else {
            return None;
        }
    }
}

/// A COPY text field's value: `None` for `\N`.
pub fn decode(field: &[u8]) -> Option<Cow<'_, [u8]>> {
    if field == b"\\N" {
        return None;
    }
    if !field.contains(&b'\\') {
        return Some(Cow::Borrowed(field));
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        if b != b'\\' || i + 1 == field.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let c = field[i + 1];
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut n = u32::from(c - b'0');
                let mut k = 0;
                while k < 2 && i < field.len() && (b'0'..=b'7').contains(&field[i]) {
                    n = n * 8 + u32::from(field[i] - b'0');
                    i += 1;
                    k += 1;
                }
                out.push(n as u8);
            }
            b'x' if i < field.len() && field[i].is_ascii_hexdigit() => {
                let mut n = 0u32;
                let mut k = 0;
                while k < 2 && i < field.len() && field[i].is_ascii_hexdigit() {
                    n = n * 16 + (field[i] as char).to_digit(16).expect("hex digit");
                    i += 1;
                    k += 1;
                }
                out.push(n as u8);
            }
            other => out.push(other),
        }
    }
    Some(Cow::Owned(out))
}

/// `value` in COPY's text form.
pub fn encode(value: &[u8], out: &mut Vec<u8>) {
    for &b in value {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

/// `redact`'s constant of each type, COPY-encoded.
fn redacted(class: TypeClass) -> &'static str {
    match class {
        TypeClass::Text { max: Some(m) } if m < 8 => &"REDACTED"[..m.max(1)],
        TypeClass::Text { .. } => "REDACTED",
        TypeClass::Int { .. } | TypeClass::Numeric => "0",
        TypeClass::Bool => "f",
        TypeClass::Uuid => "00000000-0000-0000-0000-000000000000",
        TypeClass::Json => "{}",
        TypeClass::Date => "1970-01-01",
        TypeClass::Timestamp => "1970-01-01 00:00:00",
        TypeClass::TimestampTz => "1970-01-01 00:00:00+00",
        TypeClass::Inet => "0.0.0.0",
        TypeClass::Cidr => "0.0.0.0/32",
        TypeClass::Bytea => "\\\\x",
        TypeClass::Array => "{}",
        TypeClass::Other => "",
    }
}

/// The date part of `value` moved by 1 to `days` days (either way), keyed on the date, the
/// rest (time, offset) kept. `None` for what is not `YYYY-MM-DD...` (`infinity`, BC dates).
fn shift_date(value: &[u8], masker: &Masker, days: u32) -> Option<String> {
    use chrono::Datelike;
    let s = std::str::from_utf8(value).ok()?;
    if s.ends_with(" BC") {
        return None;
    }
    // The date ends at the first blank (years past 9999 have more than 4 digits).
    let end = s.find(' ').unwrap_or(s.len());
    let date = NaiveDate::parse_from_str(&s[..end], "%Y-%m-%d").ok()?;
    let seed = masker.seed(b"date_shift", &s.as_bytes()[..end]);
    let magnitude = 1 + (seed >> 1) % u64::from(days);
    let offset = if seed & 1 == 0 {
        magnitude as i64
    } else {
        -(magnitude as i64)
    };
    let shifted = date.checked_add_signed(ChronoDuration::days(offset))?;
    Some(format!(
        "{:04}-{:02}-{:02}{}",
        shifted.year(),
        shifted.month(),
        shifted.day(),
        &s[end..]
    ))
}

fn pick(list: &'static [&'static str], seed: u64) -> &'static str {
    list[(seed % list.len() as u64) as usize]
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

const FIRST_NAMES: &[&str] = &[
    "Alice",
    "Bruno",
    "Chloe",
    "David",
    "Emma",
    "Farid",
    "Gabrielle",
    "Hugo",
    "Ines",
    "Jules",
    "Karima",
    "Louis",
    "Manon",
    "Nathan",
    "Oceane",
    "Paul",
    "Quentin",
    "Rose",
    "Samir",
    "Theo",
    "Ursula",
    "Victor",
    "Wendy",
    "Xavier",
    "Yasmine",
    "Zoe",
    "Amine",
    "Basile",
    "Camille",
    "Diane",
    "Elias",
    "Fatou",
    "Gaspard",
    "Helene",
    "Ilan",
    "Jeanne",
    "Kevin",
    "Lea",
    "Malik",
    "Nina",
];

const LAST_NAMES: &[&str] = &[
    "Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy",
    "Moreau", "Simon", "Laurent", "Lefebvre", "Michel", "Garcia", "David", "Bertrand", "Roux",
    "Vincent", "Fournier", "Morel", "Girard", "Andre", "Mercier", "Dupont", "Lambert", "Bonnet",
    "Francois", "Martinez", "Legrand", "Garnier", "Faure", "Rousseau", "Blanc", "Guerin", "Muller",
    "Henry", "Roussel", "Nicolas", "Perrin",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masking::schema::Schema;
    use crate::masking::{RulesFile, validate};
    use crate::secret::Secret;

    fn masker(toml: &str, key: &str) -> Masker {
        let mut s = Schema::default();
        s.statement("CREATE TABLE public.users (\n    id integer NOT NULL,\n    email text NOT NULL,\n    name text,\n    born date,\n    seen timestamp with time zone,\n    payload jsonb,\n    tiny smallint,\n    ip inet\n);");
        s.statement("CREATE TABLE public.orders (\n    id bigint NOT NULL,\n    email text,\n    kind text\n);");
        s.finish();
        let plan = validate(&RulesFile::parse(toml).unwrap(), &s, &[]).unwrap();
        let now = DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        Masker::new(plan, &MaskingKey::from_secret(&Secret::new(key)), now)
    }

    const RULES: &str = "[tables.users.columns]\nemail = \"hash\"\nname = \"first_name\"\nborn = \"date_shift\"\npayload = \"redact\"\nid = \"hash\"\nip = \"ip\"\n[tables.users.rows]\ncolumn = \"seen\"\nnewer_than = \"30 days\"\n[tables.orders.columns]\nemail = \"hash\"\n";

    const COPY: &str =
        "COPY public.users (id, email, name, born, seen, payload, tiny, ip) FROM stdin;";

    fn run(m: &Masker, table: &str, copy: &str, rows: &str) -> String {
        let mut t = m.for_copy("public", table, copy).unwrap().unwrap();
        let mut out = Vec::new();
        t.apply(rows.as_bytes(), &mut out);
        t.finish();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn masks_each_column_by_its_rule_and_drops_old_rows() {
        let m = masker(RULES, "k1");
        let rows = "1\tann@corp.fr\tAnn\t1990-05-17\t2026-05-20 10:00:00+02\t{\"a\": 1}\t7\t192.168.1.4\n\
                    2\tbob@corp.fr\t\\N\t\\N\t2025-01-01 00:00:00+00\t\\N\t8\t\\N\n\
                    3\tann@corp.fr\tA\\tnn\t\\N\t2026-05-30 00:00:00+00\t[]\t9\t\\N\n";
        let out = run(&m, "users", COPY, rows);
        let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split('\t').collect()).collect();
        assert_eq!(lines.len(), 2, "row 2 is older than 30 days: {out}");
        let (a, b) = (&lines[0], &lines[1]);
        assert!(
            a[1].ends_with("@example.invalid") && !out.contains("ann@corp.fr"),
            "{out}"
        );
        assert_eq!(a[1], b[1], "equal inputs, equal pseudonyms");
        assert_ne!(a[0], "1");
        assert!(a[0].parse::<i32>().is_ok());
        assert!(FIRST_NAMES.contains(&a[2]));
        assert_ne!(a[3], "1990-05-17");
        assert!(NaiveDate::parse_from_str(a[3], "%Y-%m-%d").is_ok());
        assert_eq!(a[4], "2026-05-20 10:00:00+02", "kept columns are untouched");
        assert_eq!(a[5], "{}");
        assert_eq!(a[6], "7");
        assert!(a[7].starts_with("10."));
        assert_eq!(b[7], "\\N", "NULL stays NULL");
        let c = m.counts();
        assert_eq!(c.dropped["users"], 1);
        assert_eq!(c.rewritten["hash"], 4);
        assert_eq!(c.rewritten["first_name"], 2);
        assert_eq!(c.rewritten["date_shift"], 1);
        assert_eq!(c.rewritten["redact"], 2);
    }

    #[test]
    fn same_key_same_output_across_tables_other_key_other_output() {
        let m = masker(RULES, "k1");
        let users = run(
            &m,
            "users",
            COPY,
            "1\tann@corp.fr\t\\N\t\\N\t2026-05-30 00:00:00+00\t\\N\t1\t\\N\n",
        );
        let orders = run(
            &m,
            "orders",
            "COPY public.orders (id, email, kind) FROM stdin;",
            "5\tann@corp.fr\tx\n",
        );
        let u: Vec<&str> = users.trim_end().split('\t').collect();
        let o: Vec<&str> = orders.trim_end().split('\t').collect();
        assert_eq!(u[1], o[1]);
        assert_eq!(o[0], "5", "orders.id has no rule");
        let again = run(
            &masker(RULES, "k1"),
            "users",
            COPY,
            "1\tann@corp.fr\t\\N\t\\N\t2026-05-30 00:00:00+00\t\\N\t1\t\\N\n",
        );
        assert_eq!(users, again);
        let other = run(
            &masker(RULES, "k2"),
            "users",
            COPY,
            "1\tann@corp.fr\t\\N\t\\N\t2026-05-30 00:00:00+00\t\\N\t1\t\\N\n",
        );
        assert_ne!(users, other);
    }

    #[test]
    fn integer_hash_is_a_bijection() {
        let m = masker(RULES, "k");
        let mut seen = std::collections::HashSet::new();
        for n in -2000i64..2000 {
            let y = m.permute(n, 16);
            assert!((i16::MIN as i64..=i16::MAX as i64).contains(&y));
            assert!(seen.insert(y), "collision at {n}");
        }
        for n in [0i64, 1, i32::MAX as i64, i32::MIN as i64] {
            let y = m.permute(n, 32);
            assert!((i32::MIN as i64..=i32::MAX as i64).contains(&y));
        }
        assert_ne!(m.permute(1, 64), m.permute(2, 64));
    }

    #[test]
    fn copy_text_round_trips() {
        assert_eq!(decode(b"\\N"), None);
        assert_eq!(
            decode(b"a\\tb\\\\c\\n\\101\\x41").unwrap().as_ref(),
            b"a\tb\\c\nAA"
        );
        let mut out = Vec::new();
        encode(b"a\tb\\c\n", &mut out);
        assert_eq!(out, b"a\\tb\\\\c\\n");
        assert_eq!(
            copy_columns("COPY public.\"T\" (id, \"Mixed Case\", \"a,b\") FROM stdin;").unwrap(),
            ["id", "Mixed Case", "a,b"]
        );
    }

    #[test]
    fn in_filters_keep_listed_values_only() {
        let m = masker(
            "[tables.orders.rows]\ncolumn = \"kind\"\nin = [\"a\", \"b\"]\n",
            "k",
        );
        let out = run(
            &m,
            "orders",
            "COPY public.orders (id, email, kind) FROM stdin;",
            "1\tx\ta\n2\tx\tc\n3\tx\t\\N\n4\tx\tb\n",
        );
        assert_eq!(out, "1\tx\ta\n4\tx\tb\n");
        assert_eq!(m.counts().dropped["orders"], 2);
    }
}
