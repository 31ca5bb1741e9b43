//! Validated inputs ("parse, don't validate"): each type can only hold a valid value.

use std::fmt;

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
        if !phonenumber::is_valid(&parsed) {
            return Err("not a valid number for its country".into());
        }
        let e164 = parsed.format().mode(phonenumber::Mode::E164).to_string();
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
    }

    #[test]
    fn validates_small_values() {
        assert!(parse_meta_id("1234567890").is_ok());
        assert!(parse_meta_id("12a").is_err());
        assert!(parse_meta_id("").is_err());
        assert!(parse_six_digits("123456").is_ok());
        assert!(parse_six_digits("12345").is_err());
        assert!(parse_six_digits("12345a").is_err());
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
        assert_eq!(brazil_alternate_form("+14155552671"), None);
        assert_eq!(digits_only("+55 11 98765-4321"), "5511987654321");
    }
}
