//! Language detection for the offline summarizer: an ISO 639-1 code, or `"unknown"`.
//!
//! Built on `whatlang` (small, pure Rust) rather than `lingua` (+41 MB binary; DESIGN §4). Three
//! measured adjustments make whatlang usable on short chat messages:
//!
//! * **An allowlist.** Over all 70 languages whatlang confuses short messages with rare
//!   neighbours (its own docs show "I am begging pardon" coming back as Tagalog); restricting it to the languages we
//!   expect raised accuracy on the xSID validation set from 62.7 % to 70.7 % (the final detector
//!   reaches 73.0 %; Latin-script Serbian counted correct as `hr`). Non-Latin languages
//!   with a script of their own (Greek, Hebrew, Thai, Hindi, …) stay in: their script decides,
//!   so they cost the Latin contest nothing.
//! * **Script priority.** A message in Arabic or Chinese that names an English song or product is
//!   still an Arabic or Chinese message, but whatlang picks the script with the most letters.
//!   When a non-Latin script holds a real share of the letters, Latin runs are ignored.
//! * **A function-word vote.** For Latin-script text whatlang's trigram confidence on a
//!   five-word message is often near zero. Frequent, language-specific function words ("the",
//!   "und", "hva", "hvad") are a strong signal there; the vote confirms whatlang, or overrides it
//!   when the words clearly disagree, and otherwise the answer is `"unknown"` rather than a guess.
//!
//! Kazakh is not among whatlang 0.18's languages; Cyrillic text with letters specific to Kazakh
//! (ә ғ қ ң ө ұ ү һ) is reported as `"kk"`. Latin-script Serbian, Croatian and Bosnian are one
//! language to whatlang's models and come back as `"hr"`; Cyrillic Serbian is `"sr"`.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;
use whatlang::{Detector, Lang, Script};

/// Returned when the text is too short or no language is a confident enough answer.
pub const UNKNOWN: &str = "unknown";

/// Latin-script languages whatlang may choose from. Kept short on purpose: every extra Latin
/// language is another way to be wrong about a five-word message. On xSID, also allowing Swedish,
/// Czech, Romanian, Hungarian and Finnish cost 4.4 points (Swedish takes Norwegian rows); Polish
/// and Vietnamese cost 0.1 and stay, for the users who write them.
const LATIN_ALLOWED: &[Lang] = &[
    Lang::Eng,
    Lang::Deu,
    Lang::Fra,
    Lang::Spa,
    Lang::Ita,
    Lang::Por,
    Lang::Nld,
    Lang::Tur,
    Lang::Ind,
    Lang::Dan,
    Lang::Nob,
    Lang::Lit,
    Lang::Hrv,
    Lang::Vie,
    Lang::Pol,
];

/// Languages decided (almost) by script alone, plus the Cyrillic set whatlang separates.
const OTHER_ALLOWED: &[Lang] = &[
    Lang::Jpn,
    Lang::Cmn,
    Lang::Ara,
    Lang::Pes,
    Lang::Kor,
    Lang::Rus,
    Lang::Ukr,
    Lang::Srp,
    Lang::Bul,
    Lang::Heb,
    Lang::Ell,
    Lang::Tha,
    Lang::Hin,
];

static DETECTOR: LazyLock<Detector> = LazyLock::new(|| {
    Detector::with_allowlist(LATIN_ALLOWED.iter().chain(OTHER_ALLOWED).copied().collect())
});

/// Only this many characters are examined: language is evident early, and detection cost must
/// not grow with a pasted document.
const MAX_CHARS: usize = 1_000;

/// Fewer letters than this (after dropping digits, punctuation, URLs) is "unknown".
const MIN_LETTERS: usize = 4;
/// Caseless scripts pack a word into one or two characters.
const MIN_IDEOGRAPHS: usize = 2;

/// Share of letters in a non-Latin script above which Latin runs are treated as embedded names.
const NON_LATIN_SHARE: f64 = 0.15;

/// Weight of a Han, kana or Hangul character against one alphabetic letter in that share.
const IDEOGRAPH_WEIGHT: usize = 3;

/// whatlang confidence at or above which its answer stands without the function-word vote.
const CONFIDENT: f64 = 0.5;

/// Detects the language of `text`: an ISO 639-1 code such as `"en"`, or [`UNKNOWN`].
pub fn detect_language(text: &str) -> &'static str {
    let text = prepare(text);
    let stats = ScriptStats::of(&text);
    if stats.ideographic + stats.letters < MIN_LETTERS && stats.ideographic < MIN_IDEOGRAPHS {
        return UNKNOWN;
    }
    // One ideograph or syllable block carries about as much as a short Latin word.
    let ideographic = (stats.ideographic * IDEOGRAPH_WEIGHT) as f64;
    let total = stats.letters as f64 + ideographic;
    let non_latin = (stats.letters - stats.latin) as f64 + ideographic;
    if non_latin >= 1.0 && non_latin / total >= NON_LATIN_SHARE {
        let without_latin = LATIN_RUN.replace_all(&text, " ");
        return detect_non_latin(&without_latin);
    }
    detect_latin(&text)
}

fn detect_non_latin(text: &str) -> &'static str {
    if is_kazakh(text) {
        return "kk";
    }
    match DETECTOR.detect(text) {
        // Script-decided languages come back with confidence 1.0; Cyrillic and Arabic-script
        // languages are a trigram contest among few candidates, so any answer is kept.
        Some(info) if info.script() != Script::Latin => iso_code(info.lang()),
        _ => UNKNOWN,
    }
}

fn detect_latin(text: &str) -> &'static str {
    let info = DETECTOR.detect(text);
    let vote = function_word_vote(text);
    match (info, vote) {
        (Some(info), _) if info.confidence() >= CONFIDENT => iso_code(info.lang()),
        (Some(info), Some(v)) if v.lang == info.lang() => iso_code(info.lang()),
        (_, Some(v)) if v.hits >= 2 && v.margin >= 1 => iso_code(v.lang),
        (Some(info), None) if info.confidence() > 0.0 => iso_code(info.lang()),
        _ => UNKNOWN,
    }
}

/// Strips what carries no language signal (URLs, e-mails, placeholders, digits) and caps length.
fn prepare(text: &str) -> String {
    let capped: String = text.chars().take(MAX_CHARS).collect();
    NOISE.replace_all(&capped, " ").into_owned()
}

static NOISE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:https?://|www\.)\S+|\S+@\S+|\[[A-Z]+\]|[\p{N}_]+")
        .unwrap_or_else(|_| never())
});

static LATIN_RUN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\p{Latin}+").unwrap_or_else(|_| never()));

/// A regex that matches nothing, the fallback should a constant pattern ever fail to compile
/// (a bug in this file that the tests would catch, never a property of input).
fn never() -> Regex {
    Regex::new(r"[^\s\S]").unwrap_or_else(|_| unreachable!())
}

#[derive(Default)]
struct ScriptStats {
    /// Alphabetic characters outside the ideographic scripts.
    letters: usize,
    /// Latin-script letters among `letters`.
    latin: usize,
    /// Han, kana and Hangul characters.
    ideographic: usize,
}

impl ScriptStats {
    fn of(text: &str) -> Self {
        let mut s = Self::default();
        for c in text.chars().filter(|c| c.is_alphabetic()) {
            if is_ideographic(c) {
                s.ideographic += 1;
            } else {
                s.letters += 1;
                if c.is_ascii_alphabetic()
                    || ('\u{00C0}'..='\u{024F}').contains(&c)
                    || ('\u{1E00}'..='\u{1EFF}').contains(&c)
                {
                    s.latin += 1;
                }
            }
        }
        s
    }
}

fn is_ideographic(c: char) -> bool {
    matches!(c,
        '\u{3040}'..='\u{30FF}' | '\u{31F0}'..='\u{31FF}' | '\u{3400}'..='\u{4DBF}'
        | '\u{4E00}'..='\u{9FFF}' | '\u{F900}'..='\u{FAFF}' | '\u{FF66}'..='\u{FF9F}'
        | '\u{AC00}'..='\u{D7AF}' | '\u{1100}'..='\u{11FF}' | '\u{3130}'..='\u{318F}'
        | '\u{20000}'..='\u{2FA1F}')
}

/// Letters Kazakh adds to Cyrillic; Tatar/Bashkir share a few of them but add letters Kazakh
/// lacks (җ ҡ ҙ ҫ), which veto.
fn is_kazakh(text: &str) -> bool {
    let mut kazakh = false;
    for c in text.chars().flat_map(char::to_lowercase) {
        match c {
            'ә' | 'ғ' | 'қ' | 'ң' | 'ө' | 'ұ' | 'ү' | 'һ' => kazakh = true,
            'җ' | 'ҡ' | 'ҙ' | 'ҫ' => return false,
            _ => {}
        }
    }
    kazakh
}

struct Vote {
    lang: Lang,
    hits: usize,
    /// Hits ahead of the runner-up.
    margin: usize,
}

/// Frequent function words that are (nearly) exclusive to one language of [`LATIN_ALLOWED`].
/// No domain vocabulary: only pronouns, articles, auxiliaries and particles, so the vote does not
/// depend on what a message is about. Words shared by two close languages (Danish and Norwegian
/// "jeg", "ikke") count for both and cancel out; only the distinctive ones ("hva" against "hvad")
/// move the margin.
const FUNCTION_WORDS: &[(Lang, &[&str])] = &[
    (
        Lang::Eng,
        &[
            "the", "is", "are", "was", "what", "will", "you", "my", "me", "it", "to", "of", "and",
            "for", "with", "this", "that", "how", "can", "please", "i", "i'm", "it's", "what's",
            "be", "does", "do", "at", "on", "from", "your", "should", "would", "could", "there",
            "when", "which", "about", "an", "not", "have", "has", "we", "they", "if", "or", "all",
            "any", "some",
        ],
    ),
    (
        Lang::Deu,
        &[
            "der", "das", "und", "ist", "ich", "nicht", "mit", "ein", "eine", "einen", "für",
            "auf", "mir", "mich", "wie", "wird", "was", "bitte", "kannst", "du", "zu", "den",
            "dem", "es", "gibt", "wir", "sie", "auch", "noch", "schon", "über", "aus", "bei",
            "nach", "alle", "meine", "meinen", "mein", "hat", "haben", "sind", "werden", "wenn",
            "oder", "kein", "keine",
        ],
    ),
    (
        Lang::Fra,
        &[
            "le", "la", "les", "est", "je", "et", "pour", "une", "un", "des", "du", "avec", "pas",
            "que", "qui", "dans", "sur", "mon", "ma", "mes", "vous", "tu", "moi", "ce", "cette",
            "il", "fait", "quel", "quelle", "s'il", "plaît", "sont", "mais", "ou", "tous",
            "toutes", "au", "aux", "j'ai", "c'est",
        ],
    ),
    (
        Lang::Spa,
        &[
            "el", "los", "las", "es", "y", "para", "una", "un", "con", "por", "que", "qué", "mi",
            "mis", "tu", "yo", "esta", "este", "cómo", "cuál", "hay", "quiero", "puedes", "del",
            "al", "pero", "todos", "todas", "muy", "está", "son", "también", "me", "lo", "se",
        ],
    ),
    (
        Lang::Ita,
        &[
            "il", "lo", "gli", "è", "per", "una", "uno", "con", "che", "di", "mi", "mio", "mia",
            "miei", "non", "sono", "questa", "questo", "come", "voglio", "puoi", "della", "del",
            "alle", "ma", "tutti", "tutte", "anche", "molto", "ci", "ho", "hai",
        ],
    ),
    (
        Lang::Por,
        &[
            "o", "os", "as", "é", "para", "uma", "um", "com", "que", "não", "meu", "minha", "você",
            "eu", "está", "como", "quero", "pode", "da", "do", "dos", "das", "na", "no", "mas",
            "todos", "também", "muito", "são", "isso", "esse", "essa",
        ],
    ),
    (
        Lang::Nld,
        &[
            "de", "het", "een", "en", "is", "ik", "niet", "met", "voor", "van", "mijn", "je",
            "jij", "wat", "hoe", "wordt", "zal", "mij", "me", "kun", "kan", "er", "zijn", "naar",
            "ook", "dat", "die", "deze", "maar", "alle", "heb", "heeft", "wil",
        ],
    ),
    (
        Lang::Tur,
        &[
            "bir", "ve", "bu", "için", "ile", "ne", "mi", "mı", "mu", "mü", "ben", "benim", "sen",
            "senin", "tüm", "var", "yok", "nasıl", "bana", "beni", "da", "de", "çok", "ama",
            "gibi", "daha", "olarak", "şu", "o",
        ],
    ),
    (
        Lang::Ind,
        &[
            "yang",
            "dan",
            "di",
            "ke",
            "dari",
            "untuk",
            "dengan",
            "ini",
            "itu",
            "saya",
            "aku",
            "apa",
            "bagaimana",
            "akan",
            "semua",
            "tolong",
            "apakah",
            "ada",
            "tidak",
            "bisa",
            "juga",
            "sudah",
            "belum",
            "karena",
            "kamu",
            "anda",
        ],
    ),
    (
        Lang::Dan,
        &[
            "jeg", "ikke", "og", "det", "en", "et", "hvad", "mig", "dig", "af", "nogen", "nogle",
            "bliver", "blive", "venligst", "meget", "næste", "alle", "mine", "min", "til", "på",
            "om", "er", "hvordan", "skal", "vil", "kan", "i", "hvor", "noget", "også", "efter",
            "sig",
        ],
    ),
    (
        Lang::Nob,
        &[
            "jeg",
            "ikke",
            "og",
            "det",
            "en",
            "et",
            "hva",
            "meg",
            "deg",
            "av",
            "noen",
            "blir",
            "bli",
            "vennligst",
            "mye",
            "neste",
            "alle",
            "mine",
            "min",
            "til",
            "på",
            "om",
            "er",
            "hvordan",
            "skal",
            "vil",
            "kan",
            "i",
            "hvor",
            "noe",
            "også",
            "etter",
            "seg",
            "ka",
            "kor",
            "æ",
            "eg",
            "ikkje",
            "kva",
            "blei",
            "korleis",
            "nokon",
            "ein",
        ],
    ),
    (
        Lang::Lit,
        &[
            "ir", "yra", "kad", "ar", "kaip", "kas", "man", "mano", "su", "į", "iš", "bus",
            "prašau", "ne", "tai", "bet", "visi", "visus", "labai", "kur", "kuris", "kuri",
        ],
    ),
    (
        Lang::Hrv,
        &[
            "je", "i", "u", "na", "da", "za", "se", "su", "mi", "moj", "moja", "moje", "što",
            "šta", "kako", "će", "li", "sve", "hoće", "ima", "nije", "ali", "ili", "koji", "koja",
            "sam", "smo", "biti", "mogu", "možeš",
        ],
    ),
    (
        Lang::Vie,
        &[
            "của", "và", "là", "có", "không", "cho", "tôi", "bạn", "này", "được", "những", "một",
            "với", "trong", "các", "đã", "sẽ",
        ],
    ),
    (
        Lang::Pol,
        &[
            "jest",
            "nie",
            "się",
            "że",
            "na",
            "do",
            "jak",
            "co",
            "mi",
            "mnie",
            "moje",
            "mój",
            "czy",
            "będzie",
            "proszę",
            "wszystkie",
            "ale",
            "lub",
            "który",
            "która",
            "jestem",
            "mogę",
            "możesz",
        ],
    ),
];

static WORD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[\p{L}\p{M}]+(?:['’][\p{L}]+)?").unwrap_or_else(|_| never()));

/// Which languages of [`FUNCTION_WORDS`] list each word, as a bit per language: one hash lookup
/// per word of the message instead of a scan of every list.
static FUNCTION_WORD_LANGS: LazyLock<HashMap<&'static str, u16>> = LazyLock::new(|| {
    let mut map: HashMap<&'static str, u16> = HashMap::new();
    for (i, (_, words)) in FUNCTION_WORDS.iter().enumerate().take(VOTING_LANGS) {
        for &w in *words {
            *map.entry(w).or_default() |= 1 << i;
        }
    }
    map
});

/// Languages that take part in the vote: one bit each in [`FUNCTION_WORD_LANGS`].
const VOTING_LANGS: usize = 16;

/// Counts function-word hits per language over the first words of `text`; `None` when no word
/// hits or the top is tied.
fn function_word_vote(text: &str) -> Option<Vote> {
    let lower = text.to_lowercase().replace('’', "'");
    let mut hits = [0usize; VOTING_LANGS];
    for w in WORD.find_iter(&lower).take(200) {
        let Some(&langs) = FUNCTION_WORD_LANGS.get(w.as_str()) else {
            continue;
        };
        for (i, hit) in hits.iter_mut().enumerate() {
            if langs & (1 << i) != 0 {
                *hit += 1;
            }
        }
    }
    let mut order: Vec<usize> = (0..FUNCTION_WORDS.len().min(hits.len())).collect();
    order.sort_by(|&a, &b| hits[b].cmp(&hits[a]));
    let best = *order.first()?;
    let second = order.get(1).map_or(0, |&i| hits[i]);
    if hits[best] == 0 || hits[best] == second {
        return None;
    }
    Some(Vote {
        lang: FUNCTION_WORDS.get(best)?.0,
        hits: hits[best],
        margin: hits[best] - second,
    })
}

/// ISO 639-1 code for every language whatlang 0.18 knows, so that a language decided by script
/// alone (which bypasses the allowlist) still gets a proper code.
fn iso_code(lang: Lang) -> &'static str {
    match lang {
        Lang::Epo => "eo",
        Lang::Eng => "en",
        Lang::Rus => "ru",
        Lang::Cmn => "zh",
        Lang::Spa => "es",
        Lang::Por => "pt",
        Lang::Ita => "it",
        Lang::Ben => "bn",
        Lang::Fra => "fr",
        Lang::Deu => "de",
        Lang::Ukr => "uk",
        Lang::Kat => "ka",
        Lang::Ara => "ar",
        Lang::Hin => "hi",
        Lang::Jpn => "ja",
        Lang::Heb => "he",
        Lang::Yid => "yi",
        Lang::Pol => "pl",
        Lang::Amh => "am",
        Lang::Jav => "jv",
        Lang::Kor => "ko",
        Lang::Nob => "no",
        Lang::Dan => "da",
        Lang::Swe => "sv",
        Lang::Fin => "fi",
        Lang::Tur => "tr",
        Lang::Nld => "nl",
        Lang::Hun => "hu",
        Lang::Ces => "cs",
        Lang::Ell => "el",
        Lang::Bul => "bg",
        Lang::Bel => "be",
        Lang::Mar => "mr",
        Lang::Kan => "kn",
        Lang::Ron => "ro",
        Lang::Slv => "sl",
        Lang::Hrv => "hr",
        Lang::Srp => "sr",
        Lang::Mkd => "mk",
        Lang::Lit => "lt",
        Lang::Lav => "lv",
        Lang::Est => "et",
        Lang::Tam => "ta",
        Lang::Vie => "vi",
        Lang::Urd => "ur",
        Lang::Tha => "th",
        Lang::Guj => "gu",
        Lang::Uzb => "uz",
        Lang::Pan => "pa",
        Lang::Aze => "az",
        Lang::Ind => "id",
        Lang::Tel => "te",
        Lang::Pes => "fa",
        Lang::Mal => "ml",
        Lang::Ori => "or",
        Lang::Mya => "my",
        Lang::Nep => "ne",
        Lang::Sin => "si",
        Lang::Khm => "km",
        Lang::Tuk => "tk",
        Lang::Aka => "ak",
        Lang::Zul => "zu",
        Lang::Sna => "sn",
        Lang::Afr => "af",
        Lang::Lat => "la",
        Lang::Slk => "sk",
        Lang::Cat => "ca",
        Lang::Tgl => "tl",
        Lang::Hye => "hy",
        Lang::Cym => "cy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_word_list_has_a_bit() {
        assert!(FUNCTION_WORDS.len() <= VOTING_LANGS);
        let words: usize = FUNCTION_WORDS.iter().map(|(_, w)| w.len()).sum();
        let bits: u32 = FUNCTION_WORD_LANGS.values().map(|b| b.count_ones()).sum();
        assert_eq!(bits as usize, words, "a word listed twice for one language");
    }

    #[test]
    fn patterns_compile() {
        for re in [&*NOISE, &*LATIN_RUN, &*WORD] {
            assert_ne!(re.as_str(), r"[^\s\S]");
        }
    }

    #[test]
    fn common_languages() {
        for (text, code) in [
            ("How do I reverse a linked list in Rust without cloning every node?", "en"),
            ("Kannst du mir bitte helfen, eine Bewerbung für eine Stelle zu schreiben?", "de"),
            ("Pouvez-vous m'aider à écrire une lettre de motivation pour ce poste ?", "fr"),
            ("¿Puedes ayudarme a escribir una carta de presentación para este trabajo?", "es"),
            ("Puoi aiutarmi a scrivere una lettera di presentazione per questo lavoro?", "it"),
            ("Você pode me ajudar a escrever uma carta de apresentação para este emprego?", "pt"),
            ("Kun je me helpen een sollicitatiebrief te schrijven voor deze baan?", "nl"),
            ("Bu iş için bir ön yazı yazmama yardım eder misin?", "tr"),
            ("Bisakah kamu membantu saya menulis surat lamaran untuk pekerjaan ini?", "id"),
            ("Можешь помочь мне написать сопроводительное письмо для этой работы?", "ru"),
            ("この仕事のカバーレターを書くのを手伝ってくれますか？", "ja"),
            ("你能帮我写一封这份工作的求职信吗？", "zh"),
            ("이 직업에 대한 자기소개서를 쓰는 것을 도와줄 수 있나요?", "ko"),
            ("هل يمكنك مساعدتي في كتابة خطاب تقديم لهذه الوظيفة؟", "ar"),
            ("Kan du hjælpe mig med at skrive en ansøgning til dette job? Det bliver meget godt.", "da"),
            ("Kan du hjelpe meg med å skrive en søknad til denne jobben? Hva synes du?", "no"),
            ("Ar galite padėti man parašyti motyvacinį laišką šiam darbui?", "lt"),
            ("Можеш ли да ми помогнеш да напишем мотивационо писмо за овај посао?", "sr"),
            ("Ертең таңертеңге екі оятқышты орнат", "kk"),
        ] {
            assert_eq!(detect_language(text), code, "{text}");
        }
    }

    #[test]
    fn embedded_latin_names_do_not_outvote_the_script() {
        assert_eq!(
            detect_language("شغِّل ألبوم Everybody Happy لـ Lee Aaron"),
            "ar"
        );
        assert_eq!(detect_language("播放 Taylor Swift 的 Love Story"), "zh");
    }

    #[test]
    fn short_or_empty_is_unknown() {
        for t in [
            "",
            " ",
            "ok",
            "12345",
            "?!",
            "[EMAIL] [PHONE]",
            "https://example.com/a/b",
            "👍👍👍",
        ] {
            assert_eq!(detect_language(t), UNKNOWN, "{t:?}");
        }
    }

    #[test]
    fn every_whatlang_language_has_a_two_letter_code() {
        for code in ["eng", "cym", "hye", "tgl", "cat", "ukr"] {
            let lang = Lang::from_code(code).map(iso_code);
            assert!(lang.is_some_and(|c| c.len() == 2), "{code}");
        }
    }

    #[test]
    fn adversarial_input_never_panics() {
        let huge = "абв xyz 中文 ".repeat(100_000);
        for t in [
            "\u{202E}\u{202D}\u{200B}\u{FEFF}",
            "\u{0}\u{1}\u{7F}",
            "\u{10FFFF}",
            "ـــــ",
            "e\u{0301}\u{0302}\u{0303}",
            "Ｈｅｌｌｏ ｗｏｒｌｄ",
            huge.as_str(),
        ] {
            let code = detect_language(t);
            assert!(code == UNKNOWN || code.len() == 2);
        }
    }
}
