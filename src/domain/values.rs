//! Validated inputs ("parse, don't validate"): each type can only hold a valid value.

use std::fmt;
use std::sync::LazyLock;

/// A phone number in E.164 form (`+5511987654321`), checked with libphonenumber's metadata.
#[derive(Clone, PartialEq, Eq)]
pub struct E164 {
    e164: String,
    country_code: u16,
    national: String,
}

impl E164 {
    pub fn parse(input: &str) -> Result<Self, String> {
        let s = input.trim();
        if !s.starts_with('+') {
            return Err("must be in E.164 form, starting with + and the country code".into());
        }
        if !s[1..].chars().all(|c| c.is_ascii_digit()) {
            return Err("must contain only digits after the +".into());
        }
        let parsed = phonenumber::parse(None, s).map_err(|e| format!("not a phone number: {e}"))?;
        if !phonenumber::is_valid(&parsed) && !is_legacy_brazil_mobile(s) {
            return Err("not a valid number for its country".into());
        }
        let e164 = parsed.format().mode(phonenumber::Mode::E164).to_string();
        // libphonenumber also reads a national form after the country code (`+44 07…`, with the
        // trunk prefix); E.164 has none, and the API takes numbers exactly as E.164 writes them.
        if e164 != s {
            return Err(format!("not in E.164 form: write it as {e164}"));
        }
        let country_code = parsed.country().code();
        let national = parsed.national().to_string();
        // Italian-style leading zeros are part of the national number.
        let national = if parsed.national().zeros() > 0 {
            format!(
                "{}{}",
                "0".repeat(parsed.national().zeros() as usize),
                national
            )
        } else {
            national
        };
        Ok(Self {
            e164,
            country_code,
            national,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.e164
    }

    /// Country calling code, e.g. `55` (Graph `cc`).
    pub fn country_code(&self) -> u16 {
        self.country_code
    }

    /// Number without country code (Graph `phone_number`).
    pub fn national(&self) -> &str {
        &self.national
    }

    /// All digits without `+` (360dialog `setup_info.phone_number`).
    pub fn digits(&self) -> &str {
        &self.e164[1..]
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.e164)
    }
}

impl fmt::Debug for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "E164({})", self.e164)
    }
}

/// What [`E164::parse`] accepts, as closely as a regular expression (ECMA-262, for the OpenAPI
/// document) can say it: `+`, a country calling code libphonenumber knows, and a national
/// number of a length and leading digits that code's numbering plan allows (the metadata's
/// general description of every region of the code). Whether the number lies in a range the
/// country assigned to a type of line (fixed, mobile, toll-free, …) is the one rule left to
/// [`E164::parse`]. Built from the same metadata `phonenumber` validates with, so a new crate
/// version changes both together.
pub fn e164_pattern() -> &'static str {
    static PATTERN: LazyLock<String> = LazyLock::new(|| {
        use phonenumber::metadata::DATABASE;
        // Every calling code (1 to 3 digits) with metadata; `DATABASE.iter()` would yield the
        // non-geographic ones (+800, +882, …) once for all, under their shared region "001".
        let alternatives: Vec<String> = (1..1000u16)
            .filter_map(|code| Some((code, DATABASE.by_code(&code)?)))
            .map(|(code, regions)| {
                let mut national: Vec<String> = Vec::new();
                for meta in regions {
                    let general =
                        ecma_digits(meta.descriptors().general().national_number().as_str());
                    if !national.contains(&general) {
                        national.push(general);
                    }
                }
                format!("{code}(?:{})", national.join("|"))
            })
            .collect();
        format!(r"^\+(?:{})$", alternatives.join("|"))
    });
    &PATTERN
}

/// A libphonenumber pattern in the ECMA-262 dialect JSON Schema uses, meaning the same in
/// every engine: without the whitespace the metadata formats it with, and `\d` written as
/// `[0-9]` (Unicode-aware engines, Python's among them, read `\d` as any decimal digit).
fn ecma_digits(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut in_class = false;
    let mut chars = pattern.chars().filter(|c| !c.is_whitespace());
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('d') if in_class => out.push_str("0-9"),
                Some('d') => out.push_str("[0-9]"),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            },
            '[' => {
                in_class = true;
                out.push(c);
            }
            ']' => {
                in_class = false;
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// Keeps only the digits of a formatted number (`+1 631-555-5555` → `16315555555`).
pub fn digits_only(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// How Meta's `display_phone_number` writes an E.164 number: libphonenumber's international
/// format, e.g. `+1 631-555-5555` or `+55 11 98765-4321`. Numbers the numbering-plan metadata
/// cannot group (fictional ranges, old Brazilian 8-digit mobiles) get `+cc AA BBBB-CCCC`. The
/// sandbox shows numbers this way, and the precheck asks Graph for a number by this form.
pub fn display_phone_number(e164: &str) -> String {
    let Ok(number) = phonenumber::parse(None, e164) else {
        return e164.to_owned();
    };
    let cc = number.code().value().to_string();
    let Some(national) = e164
        .strip_prefix('+')
        .unwrap_or(e164)
        .strip_prefix(cc.as_str())
    else {
        return e164.to_owned();
    };
    let formatted = number
        .format()
        .mode(phonenumber::Mode::International)
        .to_string();
    let grouped = formatted
        .strip_prefix(&format!("+{cc} "))
        .is_some_and(|rest| rest.contains([' ', '-']));
    if grouped {
        return formatted;
    }
    if national.len() < 8 {
        return format!("+{cc} {national}");
    }
    let area_len = if cc == "1" { 3 } else { 2 };
    let (area, rest) = national.split_at(area_len);
    let (head, tail) = rest.split_at(rest.len() - 4);
    format!("+{cc} {area} {head}-{tail}")
}

/// A Meta Graph object id: 1 to 32 digits.
pub fn parse_meta_id(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.len() > 32 || !s.chars().all(|c| c.is_ascii_digit()) {
        return Err("must be a numeric Meta id".into());
    }
    Ok(s.to_owned())
}

/// A 6-digit string (verification code or two-step PIN).
pub fn parse_six_digits(s: &str) -> Result<String, String> {
    if s.len() == 6 && s.chars().all(|c| c.is_ascii_digit()) {
        Ok(s.to_owned())
    } else {
        Err("must be exactly 6 digits".into())
    }
}

/// A verification code as a person copies it: its 6 digits, or the two halves WhatsApp's
/// message shows (`123-456`) with a hyphen or a space between them (`^[0-9]{3}[ -]?[0-9]{3}$`).
/// Graph's `verify_code` takes the 6 digits only.
pub fn parse_verification_code(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    // Byte 3 is ASCII, so 3 and 4 are character boundaries.
    let digits = if b.len() == 7 && matches!(b[3], b'-' | b' ') {
        format!("{}{}", &s[..3], &s[4..])
    } else {
        s.to_owned()
    };
    parse_six_digits(&digits)
        .map_err(|_| "must be the 6 digits of the code (123456 or 123-456)".into())
}

/// A Graph `language` of `request_code`: `xx_YY`.
pub fn parse_language(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let ok = b.len() == 5
        && b[0].is_ascii_lowercase()
        && b[1].is_ascii_lowercase()
        && b[2] == b'_'
        && b[3].is_ascii_uppercase()
        && b[4].is_ascii_uppercase();
    if ok {
        Ok(s.to_owned())
    } else {
        Err("must look like en_US (language_REGION)".into())
    }
}

/// Brazilian mobile numbers gained a leading 9; WhatsApp may have registered either form.
/// Returns the other form (with the 9 added or removed) for a +55 mobile number.
pub fn brazil_alternate_form(e164: &str) -> Option<String> {
    let d = e164.strip_prefix("+55")?;
    if !d.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    match d.len() {
        // 2-digit area code + 9 + 8 digits → drop the 9.
        11 if d.as_bytes()[2] == b'9' => Some(format!("+55{}{}", &d[..2], &d[3..])),
        // 2-digit area code + 8-digit mobile (starting 6-9) → add the 9.
        10 if matches!(d.as_bytes()[2], b'6'..=b'9') => Some(format!("+55{}9{}", &d[..2], &d[2..])),
        _ => None,
    }
}

/// A Brazilian mobile number in the form it had before the leading 9 (`+55 11 8765-4321`):
/// libphonenumber no longer calls it valid, but WhatsApp may still have the number registered
/// so, and a migration must name it exactly as registered (the precheck's
/// `brazil_ninth_digit_mismatch` names this form). Accepted when the form with the 9 is valid.
fn is_legacy_brazil_mobile(e164: &str) -> bool {
    brazil_alternate_form(e164)
        .filter(|with_nine| with_nine.len() > e164.len())
        .and_then(|with_nine| phonenumber::parse(None, &with_nine).ok())
        .is_some_and(|n| phonenumber::is_valid(&n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_e164() {
        let n = E164::parse("+5511987654321").unwrap();
        assert_eq!(n.as_str(), "+5511987654321");
        assert_eq!(n.country_code(), 55);
        assert_eq!(n.national(), "11987654321");
        assert_eq!(n.digits(), "5511987654321");
        let us = E164::parse("+14155552671").unwrap();
        assert_eq!(us.country_code(), 1);
        assert_eq!(us.national(), "4155552671");
    }

    #[test]
    fn rejects_bad_numbers() {
        assert!(E164::parse("5511987654321").is_err());
        assert!(E164::parse("+55 11 98765-4321").is_err());
        assert!(E164::parse("+1").is_err());
        assert!(E164::parse("+999123").is_err());
        // The two numbers the OpenAPI pattern used to let through: too short for +1, and a
        // 14-digit national number +7 only has for 8-prefixed toll-free numbers.
        assert!(E164::parse("+10").is_err());
        assert!(E164::parse("+746859440850270").is_err());
    }

    #[test]
    fn takes_only_the_e164_form() {
        // A national form after the country code is a valid number, written wrongly.
        assert_eq!(
            E164::parse("+4407912345678").unwrap_err(),
            "not in E.164 form: write it as +447912345678"
        );
        assert!(E164::parse("+447912345678").is_ok());
        // Italian fixed lines keep their leading 0 in E.164.
        assert_eq!(
            E164::parse("+390236618300").unwrap().as_str(),
            "+390236618300"
        );
    }

    /// The pattern accepts every number of libphonenumber's metadata (an example of each type
    /// of line of each region) that [`E164::parse`] accepts, and refuses what it refuses for
    /// its length or leading digits.
    #[test]
    fn the_pattern_accepts_what_parse_accepts() {
        use phonenumber::metadata::DATABASE;
        let pattern = regex::Regex::new(e164_pattern()).unwrap();
        let mut accepted = 0;
        for meta in (1..1000u16).flat_map(|code| DATABASE.by_code(&code).unwrap_or_default()) {
            let d = meta.descriptors();
            for desc in [
                d.fixed_line(),
                d.mobile(),
                d.toll_free(),
                d.premium_rate(),
                d.shared_cost(),
                d.personal_number(),
                d.voip(),
                d.pager(),
                d.uan(),
                d.voicemail(),
            ]
            .into_iter()
            .flatten()
            {
                let Some(example) = desc.example() else {
                    continue;
                };
                let number = format!("+{}{example}", meta.country_code());
                if E164::parse(&number).is_ok() {
                    accepted += 1;
                    assert!(pattern.is_match(&number), "{number} ({})", meta.id());
                }
            }
        }
        assert!(accepted > 1000, "only {accepted} example numbers");
        for number in [
            "+10",
            "+746859440850270",
            "+1415555267",
            "+14155552671234",
            "+0123456789",
            "+999123456",
            "+4407912345678",
            "5511987654321",
            "+55 11 98765 4321",
            "+５511987654321",
        ] {
            assert!(E164::parse(number).is_err(), "{number}");
            assert!(!pattern.is_match(number), "{number}");
        }
        for number in [
            "+5511987654321",
            "+14155552671",
            "+390236618300",
            "+80012345678",
        ] {
            assert!(E164::parse(number).is_ok(), "{number}");
            assert!(pattern.is_match(number), "{number}");
        }
        assert!(
            !e164_pattern().contains(r"\d"),
            "\\d reads as any digit in Python"
        );
    }

    /// The phone numbers scripts/fuzz.sh mixes into generated requests are ones the API takes.
    #[test]
    fn the_fuzzers_phone_numbers_are_valid() {
        let dict = include_str!("../../scripts/fuzz-phone-numbers.dict");
        let pattern = regex::Regex::new(e164_pattern()).unwrap();
        let numbers: Vec<&str> = dict
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.trim_matches('"'))
            .collect();
        assert!(numbers.len() > 200, "{}", numbers.len());
        for number in numbers {
            assert_eq!(
                E164::parse(number).map(|n| n.to_string()),
                Ok(number.to_owned())
            );
            assert!(pattern.is_match(number), "{number}");
        }
    }

    #[test]
    fn validates_small_values() {
        assert!(parse_meta_id("1234567890").is_ok());
        assert!(parse_meta_id("12a").is_err());
        assert!(parse_meta_id("").is_err());
        assert!(parse_six_digits("123456").is_ok());
        assert!(parse_six_digits("12345").is_err());
        assert!(parse_six_digits("12345a").is_err());
        for ok in ["123456", "123-456", "123 456"] {
            assert_eq!(parse_verification_code(ok).unwrap(), "123456", "{ok}");
        }
        for bad in [
            "123-45",
            "1234-567",
            "123_456",
            "12३-456",
            "123.456",
            "12 34 56",
            "1-2-3-4-5-6",
            "123--456",
            "-123456",
            " 123456",
            "",
        ] {
            assert!(parse_verification_code(bad).is_err(), "{bad}");
        }
        assert!(parse_language("en_US").is_ok());
        assert!(parse_language("en").is_err());
        assert!(parse_language("EN_us").is_err());
    }

    #[test]
    fn brazil_ninth_digit_forms() {
        assert_eq!(
            brazil_alternate_form("+5511987654321").as_deref(),
            Some("+551187654321")
        );
        assert_eq!(
            brazil_alternate_form("+551187654321").as_deref(),
            Some("+5511987654321")
        );
        // Landline (starts with 2-5): no alternate form.
        assert_eq!(brazil_alternate_form("+551133334444"), None);
        // The form without the 9 is a number a migration can name (WhatsApp may have it
        // registered so), though libphonenumber no longer calls it valid.
        for legacy in ["+551187654321", "+552196543210", "+558178765432"] {
            let n = E164::parse(legacy).unwrap_or_else(|e| panic!("{legacy}: {e}"));
            assert_eq!(n.national(), &legacy[3..]);
            let with_nine = brazil_alternate_form(legacy).unwrap();
            assert!(E164::parse(&with_nine).is_ok(), "{with_nine}");
        }
        // Not every 10-digit +55 number: an unknown area code, or a 9 already in front.
        assert!(E164::parse("+551087654321").is_err());
        assert!(E164::parse("+55119876543").is_err());
        assert_eq!(brazil_alternate_form("+14155552671"), None);
        assert_eq!(digits_only("+55 11 98765-4321"), "5511987654321");
    }
}
