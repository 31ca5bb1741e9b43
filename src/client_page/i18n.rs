//! The client page's languages: English, Portuguese (Brazil) and Spanish, one Fluent catalogue
//! each (`locales/<lang>/client_page.ftl`, embedded at compile time), and the choice of one
//! per request (`?lang=` > `Accept-Language` > the migration's `otp_language`).

use std::borrow::Cow;
use std::collections::HashMap;

use fluent_bundle::FluentValue;
use fluent_templates::{LanguageIdentifier, Loader, langid, static_loader};

static_loader! {
    static LOCALES = {
        locales: "./locales",
        fallback_language: "en",
        // No Unicode isolation marks around arguments: every argument is a number, a time or
        // a name in the page's own script, and the marks would show up in copied text.
        customise: |bundle| bundle.set_use_isolating(false),
    };
}

const EN: LanguageIdentifier = langid!("en");
const PT_BR: LanguageIdentifier = langid!("pt-BR");
const ES: LanguageIdentifier = langid!("es");

/// A language of the client page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Lang {
    #[default]
    En,
    PtBr,
    Es,
}

/// An argument of a message: text (names, formatted times) or a number (plural selection).
#[derive(Debug, Clone)]
pub enum Arg<'a> {
    Str(&'a str),
    Num(i64),
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(s: &'a str) -> Self {
        Arg::Str(s)
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(s: &'a String) -> Self {
        Arg::Str(s)
    }
}

impl From<i64> for Arg<'_> {
    fn from(n: i64) -> Self {
        Arg::Num(n)
    }
}

impl Lang {
    pub const ALL: [Lang; 3] = [Lang::En, Lang::PtBr, Lang::Es];

    /// The BCP 47 tag: `<html lang>`, `?lang=` and the catalogue's folder.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::PtBr => "pt-BR",
            Lang::Es => "es",
        }
    }

    /// The language's own name, for the switcher.
    pub fn native_name(self) -> &'static str {
        match self {
            Lang::En => "English",
            Lang::PtBr => "Português (Brasil)",
            Lang::Es => "Español",
        }
    }

    fn langid(self) -> LanguageIdentifier {
        match self {
            Lang::En => EN,
            Lang::PtBr => PT_BR,
            Lang::Es => ES,
        }
    }

    /// A `?lang=` value: exactly one of the codes (case-insensitive), or a language whose
    /// primary subtag is ours (`pt`, `es-MX`, `en_GB`).
    pub fn from_tag(tag: &str) -> Option<Lang> {
        let primary = tag
            .trim()
            .split(['-', '_'])
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        match primary.as_str() {
            "en" => Some(Lang::En),
            "pt" => Some(Lang::PtBr),
            "es" => Some(Lang::Es),
            _ => None,
        }
    }

    /// The message `id` in this language. Falls back to English (then to the id) if the
    /// catalogue lacks it or it fails to format; the tests make sure that never happens.
    pub fn t(self, id: &str) -> String {
        self.t_args(id, &[])
    }

    /// The message `id` with its arguments (`$name` → value).
    pub fn t_args(self, id: &str, args: &[(&str, Arg<'_>)]) -> String {
        let map: HashMap<Cow<'static, str>, FluentValue<'_>> = args
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Arg::Str(s) => FluentValue::from(*s),
                    Arg::Num(n) => FluentValue::from(*n),
                };
                (Cow::Owned((*k).to_owned()), v)
            })
            .collect();
        #[cfg(test)]
        tests::record_use(id);
        match LOCALES.lookup_single_language(&self.langid(), id, Some(&map)) {
            Ok(text) => text,
            Err(e) => {
                if cfg!(test) {
                    panic!("message `{id}` in {}: {e}", self.code());
                }
                tracing::warn!(message_id = id, lang = self.code(), error = %e, "client page: message missing or broken");
                LOCALES
                    .try_lookup_with_args(&EN, id, &map)
                    .unwrap_or_else(|| id.to_owned())
            }
        }
    }
}

/// The language of a client-page request. Priority: `?lang=` when it names one of ours, then
/// `Accept-Language` (by q-value, the first language we have: `pt`/`pt-*` → pt-BR, `es-*` →
/// es, `en-*` → en; `q=0` means "not this one"), then the migration's `otp_language`
/// (`pt_BR` → pt-BR, `es`/`es_*` → es, anything else → en).
pub fn negotiate(
    query_lang: Option<&str>,
    accept_language: Option<&str>,
    default_from_otp_language: &str,
) -> Lang {
    if let Some(lang) = query_lang.and_then(Lang::from_tag) {
        return lang;
    }
    if let Some(lang) = accept_language.and_then(from_accept_language) {
        return lang;
    }
    from_otp_language(default_from_otp_language)
}

/// The WhatsApp template language of the code (`en_US`, `pt_BR`, `es_MX`…) as a page language.
fn from_otp_language(otp_language: &str) -> Lang {
    match Lang::from_tag(otp_language) {
        Some(Lang::PtBr)
            if otp_language.eq_ignore_ascii_case("pt_BR")
                || otp_language.eq_ignore_ascii_case("pt-BR") =>
        {
            Lang::PtBr
        }
        Some(Lang::Es) => Lang::Es,
        _ => Lang::En,
    }
}

/// The preferred language of an `Accept-Language` header that we have (RFC 9110 §12.5.4).
fn from_accept_language(header: &str) -> Option<Lang> {
    let mut ranges: Vec<(f32, usize, &str)> = header
        .split(',')
        .enumerate()
        .filter_map(|(i, item)| {
            let mut parts = item.split(';');
            let tag = parts.next()?.trim();
            if tag.is_empty() {
                return None;
            }
            let mut q = 1.0f32;
            for p in parts {
                if let Some(v) = p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")) {
                    q = v.trim().parse().unwrap_or(0.0);
                }
            }
            (q > 0.0).then_some((q, i, tag))
        })
        .collect();
    // Highest q first; equal q keeps the header's order.
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    ranges
        .into_iter()
        .find_map(|(_, _, tag)| Lang::from_tag(tag))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeSet;

    use super::*;

    thread_local! {
        static USED: RefCell<BTreeSet<String>> = const { RefCell::new(BTreeSet::new()) };
    }

    pub(crate) fn record_use(id: &str) {
        USED.with(|u| u.borrow_mut().insert(id.to_owned()));
    }

    /// The message ids looked up on this thread so far.
    pub(crate) fn used_ids() -> BTreeSet<String> {
        USED.with(|u| u.borrow().clone())
    }

    /// The message ids of one catalogue file, parsed with Fluent's own parser (which must
    /// accept the whole file).
    pub(crate) fn catalogue_ids(lang: Lang) -> BTreeSet<String> {
        let path = format!(
            "{}/locales/{}/client_page.ftl",
            env!("CARGO_MANIFEST_DIR"),
            lang.code()
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let resource = fluent_syntax::parser::parse(text.as_str())
            .unwrap_or_else(|(_, errors)| panic!("{path}: {errors:?}"));
        resource
            .body
            .iter()
            .filter_map(|entry| match entry {
                fluent_syntax::ast::Entry::Message(m) => Some(m.id.name.to_owned()),
                fluent_syntax::ast::Entry::Term(t) => Some(format!("-{}", t.id.name)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_three_catalogues_have_the_same_ids() {
        let en = catalogue_ids(Lang::En);
        assert!(en.len() > 50, "{en:?}");
        for lang in [Lang::PtBr, Lang::Es] {
            let other = catalogue_ids(lang);
            let missing: Vec<_> = en.difference(&other).collect();
            let extra: Vec<_> = other.difference(&en).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "{}: missing {missing:?}, not in en {extra:?}",
                lang.code()
            );
        }
    }

    #[test]
    fn plural_forms_follow_each_language() {
        let attempts = |lang: Lang, n: i64| lang.t_args("attempts-left", &[("count", n.into())]);
        assert_eq!(attempts(Lang::En, 1), "1 attempt left.");
        assert_eq!(attempts(Lang::En, 2), "2 attempts left.");
        assert_eq!(attempts(Lang::En, 0), "No attempts left.");
        assert_eq!(attempts(Lang::PtBr, 1), "Resta 1 tentativa.");
        assert_eq!(attempts(Lang::PtBr, 2), "Restam 2 tentativas.");
        assert_eq!(attempts(Lang::Es, 1), "Le queda 1 intento.");
        assert_eq!(attempts(Lang::Es, 2), "Le quedan 2 intentos.");
        assert_eq!(
            Lang::Es.t_args("wait-seconds", &[("count", 1.into())]),
            "1 segundo"
        );
        assert_eq!(
            Lang::PtBr.t_args("wait-minutes", &[("count", 3.into())]),
            "3 minutos"
        );
        // A select on a string argument.
        assert_eq!(
            Lang::En.t_args("resend-switch", &[("method", "voice".into())]),
            "Call me instead"
        );
        assert_eq!(
            Lang::En.t_args("resend-switch", &[("method", "sms".into())]),
            "Send an SMS instead"
        );
    }

    #[test]
    fn negotiation_table() {
        use Lang::*;
        let cases: &[(Option<&str>, Option<&str>, &str, Lang)] = &[
            // The header, by q-value, mapped to the language we have.
            (None, Some("pt-PT,pt;q=0.9"), "en_US", PtBr),
            (None, Some("de, es;q=0.5"), "en_US", Es),
            (None, Some("es-MX"), "en_US", Es),
            (None, Some("en-GB,en;q=0.8"), "pt_BR", En),
            (None, Some("fr;q=0.9, pt-BR;q=0.8, es;q=0.95"), "en_US", Es),
            (None, Some("es;q=0, pt"), "en_US", PtBr),
            (None, Some("*"), "es_AR", Es),
            // `?lang=` beats the header; an unknown one is ignored.
            (Some("es"), Some("pt-BR,en;q=0.5"), "en_US", Es),
            (Some("pt-BR"), Some("es"), "en_US", PtBr),
            (Some("EN"), None, "pt_BR", En),
            (Some("de"), Some("es"), "en_US", Es),
            // Nothing usable: the migration's otp_language.
            (None, None, "pt_BR", PtBr),
            (Some("xx"), Some("de, fr;q=0.5"), "pt_BR", PtBr),
            (None, Some("de"), "es", Es),
            (None, Some(""), "es_MX", Es),
            (None, None, "en_US", En),
            (None, None, "pt_PT", En),
            (None, None, "fr", En),
        ];
        for (query, header, otp, want) in cases {
            assert_eq!(
                negotiate(*query, *header, otp),
                *want,
                "query {query:?}, Accept-Language {header:?}, otp_language {otp}"
            );
        }
    }

    #[test]
    fn codes_round_trip() {
        for lang in Lang::ALL {
            assert_eq!(Lang::from_tag(lang.code()), Some(lang));
        }
    }
}
