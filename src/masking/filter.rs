//! Row filters (`[tables.t.rows]`) deciding on one `COPY` field: kept, dropped, or, for a
//! value the filter cannot read, dropped too and counted apart. A filter fails closed: a row
//! it cannot decide never reaches the replica.
//!
//! `newer_than` reads every text form PostgreSQL writes for `date`, `timestamp` and
//! `timestamptz` in `COPY`: pg_dump sets `DateStyle` to ISO (`2024-05-01 10:00:00.5+02`,
//! offsets with minutes and seconds such as `+00:09:21` for local mean time, years past 9999,
//! ` BC`, `infinity`, `-infinity`), and the other styles (`SQL`, `German`, `Postgres`, with a
//! zone abbreviation and a day-month order the text does not tell) are decided when every
//! reading of them falls on the same side of the cutoff by more than any zone's offset.

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, NaiveDateTime, NaiveTime, Utc};

use super::validate::TypeClass;

/// What a filter makes of one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Keep,
    Drop,
    /// The value could not be read: the row is dropped, and counted apart.
    Unreadable,
}

/// A filter, ready to decide on decoded field values.
pub enum KeepTest {
    In(Vec<Vec<u8>>),
    NewerThan(DateTime<Utc>, TypeClass),
}

impl KeepTest {
    /// The decision for the row whose filter column holds `value` (`None`: SQL `NULL`).
    pub fn decide(&self, value: Option<&[u8]>) -> Decision {
        let Some(v) = value else {
            return Decision::Drop;
        };
        let keep = match self {
            KeepTest::In(set) => Some(set.iter().any(|x| x == v)),
            KeepTest::NewerThan(cutoff, class) => std::str::from_utf8(v)
                .ok()
                .and_then(|s| newer_than(s.trim(), *cutoff, *class)),
        };
        match keep {
            Some(true) => Decision::Keep,
            Some(false) => Decision::Drop,
            None => Decision::Unreadable,
        }
    }
}

/// The most a zone's offset from UTC can be (PostgreSQL accepts up to 15:59:59), plus a day's
/// margin for a date compared with a time.
const ZONE_SLACK_HOURS: i64 = 16 + 24;

/// Whether `s` is at or after `cutoff`; `None` when it cannot be told.
fn newer_than(s: &str, cutoff: DateTime<Utc>, class: TypeClass) -> Option<bool> {
    match s {
        "infinity" => return Some(true),
        "-infinity" => return Some(false),
        _ => {}
    }
    // Years past what a calendar library holds (PostgreSQL's dates reach 5874897 AD, 4713 BC):
    // so far from any cutoff that the year alone decides.
    if let Some((y, _)) = s
        .split_once('-')
        .filter(|(y, _)| y.len() > 5 && all_digits(y))
    {
        let far: u64 = y.parse().unwrap_or(u64::MAX);
        if far > 200_000 {
            return Some(!s.ends_with(" BC"));
        }
    }
    if let Some(r) = read_iso(s) {
        return Some(match class {
            TypeClass::Date => r.at.date() >= cutoff.date_naive(),
            TypeClass::Timestamp => r.at >= cutoff.naive_utc(),
            _ => {
                // timestamptz: the offset is in the text (ISO always writes it).
                let utc = r.at - ChronoDuration::seconds(i64::from(r.offset?));
                utc >= cutoff.naive_utc()
            }
        });
    }
    // Another DateStyle: every reading must agree, far enough from the cutoff that no zone
    // or day-month order could change the answer.
    let readings = read_other_styles(s);
    if readings.is_empty() {
        return None;
    }
    let slack = ChronoDuration::hours(ZONE_SLACK_HOURS);
    let cut = cutoff.naive_utc();
    let sides: Vec<Option<bool>> = readings
        .iter()
        .map(|at| {
            if *at >= cut + slack {
                Some(true)
            } else if *at < cut - slack {
                Some(false)
            } else {
                None
            }
        })
        .collect();
    let first = sides[0]?;
    sides.iter().all(|x| *x == Some(first)).then_some(first)
}

/// An ISO value: the local date and time, and the offset east of UTC in seconds if written.
struct Iso {
    at: NaiveDateTime,
    offset: Option<i32>,
}

/// `[-]Y...Y-MM-DD[ HH:MM[:SS[.ffffff]][(+|-)HH[:MM[:SS]]]][ BC]`.
fn read_iso(s: &str) -> Option<Iso> {
    let (s, bc) = match s.strip_suffix(" BC") {
        Some(r) => (r, true),
        None => (s, false),
    };
    let (date, time) = match s.split_once([' ', 'T']) {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut parts = date.splitn(3, '-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if y.len() < 4 || !all_digits(y) || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let year: i32 = y.parse().ok()?;
    let year = if bc { 1 - year } else { year };
    let date = NaiveDate::from_ymd_opt(year, m.parse().ok()?, d.parse().ok()?)?;
    let Some(time) = time else {
        return Some(Iso {
            at: date.and_time(NaiveTime::MIN),
            offset: None,
        });
    };
    // The offset starts at the first sign after the clock.
    let (clock, offset) = match time.find(['+', '-']) {
        Some(p) => (&time[..p], Some(read_offset(&time[p..])?)),
        None => (time, None),
    };
    let t = read_clock(clock)?;
    Some(Iso {
        at: date.and_time(t),
        offset,
    })
}

/// `HH:MM[:SS[.f]]`.
fn read_clock(s: &str) -> Option<NaiveTime> {
    let mut it = s.splitn(3, ':');
    let h: u32 = digits(it.next()?)?;
    let m: u32 = digits(it.next()?)?;
    let (sec, nanos) = match it.next() {
        None => (0, 0),
        Some(sf) => {
            let (sec, frac) = sf.split_once('.').unwrap_or((sf, ""));
            let frac = frac.get(..frac.len().min(9)).unwrap_or("");
            let nanos = if frac.is_empty() {
                0
            } else {
                digits::<u32>(frac)? * 10u32.pow(9 - frac.len() as u32)
            };
            (digits(sec)?, nanos)
        }
    };
    if h == 24 && m == 0 && sec == 0 && nanos == 0 {
        // PostgreSQL accepts 24:00:00 as the end of the day.
        return NaiveTime::from_hms_nano_opt(23, 59, 59, 999_999_999);
    }
    NaiveTime::from_hms_nano_opt(h, m, sec, nanos)
}

/// `+HH`, `-HH:MM`, `+HH:MM:SS`: seconds east of UTC.
fn read_offset(s: &str) -> Option<i32> {
    let sign = if s.starts_with('-') { -1 } else { 1 };
    let mut total = 0i32;
    for (i, part) in s[1..].split(':').enumerate() {
        if i > 2 || part.len() != 2 {
            return None;
        }
        let n: i32 = digits(part)?;
        total += n * [3600, 60, 1][i];
    }
    Some(sign * total)
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn digits<T: std::str::FromStr>(s: &str) -> Option<T> {
    all_digits(s).then(|| s.parse().ok()).flatten()
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// The possible readings of a value in the `SQL` (`12/17/1997 07:37:16.00 PST`), `German`
/// (`17.12.1997 07:37:16.00 PST`) or `Postgres` (`Wed Dec 17 07:37:16 1997 PST`,
/// `12-17-1997`) style, as local times (the zone, an abbreviation, is not read). Empty when
/// it is none of them.
fn read_other_styles(s: &str) -> Vec<NaiveDateTime> {
    let (s, bc) = match s.strip_suffix(" BC") {
        Some(r) => (r, true),
        None => (s, false),
    };
    let words: Vec<&str> = s.split_whitespace().collect();
    let mut out = Vec::new();
    let year_of = |y: &str| -> Option<i32> {
        let y: i32 = digits(y)?;
        Some(if bc { 1 - y } else { y })
    };
    let clock = |w: Option<&&str>| -> Option<NaiveTime> {
        match w {
            Some(t) if t.contains(':') => read_clock(t),
            _ => Some(NaiveTime::MIN),
        }
    };
    let Some(first) = words.first() else {
        return out;
    };
    // Postgres: `Wed Dec 17 07:37:16 1997 PST` (or `Dec 17 07:37:16 1997`).
    let named = if MONTHS
        .iter()
        .any(|m| first.to_ascii_lowercase().starts_with(m))
    {
        Some(&words[..])
    } else {
        words.get(1..)
    };
    if let Some(w) = named
        && let Some(month) = w
            .first()
            .and_then(|m| MONTHS.iter().position(|x| m.to_ascii_lowercase() == *x))
        && let (Some(day), Some(t), Some(y)) = (w.get(1), w.get(2), w.get(3))
        && let (Some(day), Some(t), Some(y)) = (digits::<u32>(day), read_clock(t), year_of(y))
        && let Some(d) = NaiveDate::from_ymd_opt(y, month as u32 + 1, day)
    {
        out.push(d.and_time(t));
        return out;
    }
    // SQL `a/b/y`, German `d.m.y`, Postgres date `a-b-y`: day and month may be either way.
    for sep in ['/', '.', '-'] {
        let parts: Vec<&str> = first.split(sep).collect();
        if parts.len() != 3 {
            continue;
        }
        let (Some(a), Some(b), Some(y)) = (
            digits::<u32>(parts[0]),
            digits::<u32>(parts[1]),
            year_of(parts[2]),
        ) else {
            continue;
        };
        let Some(t) = clock(words.get(1)) else {
            return Vec::new();
        };
        for (m, d) in [(a, b), (b, a)] {
            if let Some(date) = NaiveDate::from_ymd_opt(y, m, d) {
                out.push(date.and_time(t));
            }
        }
        return out;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cutoff() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-03T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn decide(class: TypeClass, v: &str) -> Decision {
        KeepTest::NewerThan(cutoff(), class).decide(Some(v.as_bytes()))
    }

    #[test]
    fn reads_every_iso_form_pg_dump_writes() {
        use Decision::*;
        let tz = TypeClass::TimestampTz;
        for (v, want) in [
            ("2026-03-04 10:00:00+01", Keep),
            ("2026-03-02 23:30:00-01", Keep),
            ("2026-03-02 23:30:00+01", Drop),
            ("2026-03-03 00:00:00+00", Keep),
            ("2026-03-03 00:00:00.000001+00", Keep),
            ("2026-03-02 23:59:59.999999+00", Drop),
            ("1890-06-01 12:09:21+00:09:21", Drop),
            ("2027-06-01 12:09:21+05:30", Keep),
            ("2026-03-03 00:19:00+00:19:32", Drop),
            ("2026-03-03 00:20:00+00:19:32", Keep),
            ("12026-01-01 00:00:00+00", Keep),
            ("0044-03-15 12:00:00+00 BC", Drop),
            ("infinity", Keep),
            ("-infinity", Drop),
            ("soon", Unreadable),
            ("2026-13-01 00:00:00+00", Unreadable),
            ("2026-03-04 10:00:00", Unreadable),
        ] {
            assert_eq!(decide(tz, v), want, "{v}");
        }
        let ts = TypeClass::Timestamp;
        assert_eq!(decide(ts, "2026-03-03 00:00:00"), Keep);
        assert_eq!(decide(ts, "2026-03-02 23:59:59.5"), Drop);
        assert_eq!(decide(ts, "2026-03-03 24:00:00"), Keep);
        assert_eq!(decide(ts, "0001-01-01 00:00:00 BC"), Drop);
        let d = TypeClass::Date;
        assert_eq!(decide(d, "2026-03-03"), Keep);
        assert_eq!(decide(d, "2026-03-02"), Drop);
        assert_eq!(decide(d, "4713-01-01 BC"), Drop);
        assert_eq!(decide(d, "294276-12-31"), Keep);
        assert_eq!(
            KeepTest::NewerThan(cutoff(), d).decide(None),
            Drop,
            "NULL is dropped"
        );
    }

    #[test]
    fn other_date_styles_are_decided_only_when_no_reading_could_keep_an_old_row() {
        use Decision::*;
        let tz = TypeClass::TimestampTz;
        for (v, want) in [
            ("12/17/1997 07:37:16.00 PST", Drop),
            ("17.12.1997 07:37:16.00 CET", Drop),
            ("Wed Dec 17 07:37:16 1997 PST", Drop),
            ("Thu Mar 05 07:37:16 2026 PST", Keep),
            ("Tue Mar 03 01:00:00 2026 PST", Unreadable),
            ("12/17/2030 07:37:16.00 PST", Keep),
            // 03/05 is the 5th of March or the 3rd of May: both after the cutoff.
            ("03/05/2026 12:00:00 UTC", Keep),
            // 02/04 is February (before) or the 2nd of April (after): undecidable.
            ("02/04/2026 12:00:00 UTC", Unreadable),
        ] {
            assert_eq!(decide(tz, v), want, "{v}");
        }
        assert_eq!(decide(TypeClass::Date, "12-17-1997"), Drop);
    }

    #[test]
    fn in_filters_compare_text() {
        let t = KeepTest::In(vec![b"a".to_vec(), b"t".to_vec()]);
        assert_eq!(t.decide(Some(b"a")), Decision::Keep);
        assert_eq!(t.decide(Some(b"b")), Decision::Drop);
        assert_eq!(t.decide(None), Decision::Drop);
    }
}
