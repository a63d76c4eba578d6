//! Detects whether the assistant declined a request, for conversations whose upstream signals
//! carry no `refused` flag.
//!
//! Refusal rates feed the over-refusal and under-enforcement alerts (DESIGN §6), so a false
//! positive is as costly as a miss. The rules therefore look only at the opening sentences —
//! assistants refuse up front, while "I can't stress this enough" deep in a helpful answer is not
//! a refusal — and require a refusal *verb* after the negation ("I can't help", "I cannot
//! provide"), so "I can't wait to help!" or "I cannot recommend this enough" do not count.

use std::sync::LazyLock;

use regex::Regex;

/// Only this many sentences from the start of the reply are examined.
const OPENING_SENTENCES: usize = 3;
/// …and at most this many characters, so a reply without punctuation stays cheap.
const OPENING_CHARS: usize = 400;

/// True when the opening of `assistant_text` reads as a refusal.
pub fn assistant_refused(assistant_text: &str) -> bool {
    let opening = opening(assistant_text);
    if opening.is_empty() {
        return false;
    }
    REFUSALS.iter().any(|re| re.is_match(&opening)) && !NOT_REFUSAL.is_match(&opening)
}

/// The first sentences, lowercased, with typographic apostrophes folded to `'` and whitespace
/// collapsed, so the rules need only one spelling of each phrase.
fn opening(text: &str) -> String {
    let mut out = String::new();
    let mut sentences = 0;
    let mut prev_space = true;
    for c in text.chars().take(OPENING_CHARS) {
        let c = match c {
            '\u{2019}' | '\u{2018}' | '\u{02BC}' | '\u{2032}' | '\u{FF07}' | '`' | '\u{00B4}' => {
                '\''
            }
            // Zero-width and formatting characters would split the phrases apart.
            c if is_format(c) => continue,
            c if c.is_whitespace() || c.is_control() => ' ',
            c => c,
        };
        if c == ' ' {
            if prev_space {
                continue;
            }
            prev_space = true;
        } else {
            prev_space = false;
        }
        out.extend(c.to_lowercase());
        if matches!(c, '.' | '!' | '?' | '。' | '！' | '？' | '\n') {
            sentences += 1;
            if sentences >= OPENING_SENTENCES {
                break;
            }
        }
    }
    out.trim().to_string()
}

fn is_format(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}' | '\u{00AD}')
}

/// "I" plus a negation an assistant uses to decline ("I can't", "I'm not able to", "I'd rather not").
const NEG: &str = r"(?:i(?:'m| am) (?:really |just |simply )?(?:not able to|unable to|not going to|not allowed to|not comfortable|afraid i (?:can't|cannot|can not))|i (?:really |simply |just |unfortunately |honestly )?(?:can ?not|can't|won't|will not|must decline to|have to decline to|shouldn't|should not|don't think i can|do not think i can|don't feel comfortable|do not feel comfortable)|i(?:'d| would) rather not)";

/// What is being declined. Bare "do"/"write" would catch "I can't do everything, but…", so those
/// need an object that points back at the request.
const DECLINED: &str = r"(?:help|assist|provide|comply|fulfil|fulfill|support|engage|participate|facilitate|generate|create|produce|share|give|offer|continue|proceed|answer|complete|discuss|write (?:that|this|it|such|those|these|something like)|do (?:that|this|it|so)|make (?:that|this|it)|go along|be of help|be of assistance|help(?:ing)? you|assist(?:ing)? (?:you|with)|(?:writing|creating|generating|producing|providing|helping|assisting|sharing|giving|doing|making) (?:that|this|it|such|those|these|content|something|anything|instructions|information))";

static REFUSALS: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    [
        // "I can't help with that", "I cannot assist", "I'm not able to provide", "I won't do that".
        format!(r"\b{NEG} (?:\w+ )?{DECLINED}\b"),
        // "Sorry, but I can't." / "I'm afraid I can't." with nothing after the negation.
        format!(r"\b(?:sorry|apologi[sz]e|afraid|unfortunately)\b[^.!?]{{0,40}}\b{NEG}\s*(?:[.!]|$)"),
        // "As an AI, I cannot…" / "As an AI language model, I don't…"
        r"\bas an ai(?: language model| assistant| model)?,? i (?:can ?not|can't|am not able|'m not able|am unable|'m unable|don't|do not|won't|will not)\b".to_string(),
        // "That's not something I can help with." / "This isn't something I'm able to assist with."
        r"\b(?:not|isn't|is not) (?:something|anything) i(?:'m| am)? (?:can|able to|going to|willing to|comfortable) (?:help|assist|provide|do|support|engage)".to_string(),
        // "I must decline." / "I have to decline this request."
        r"\bi (?:must|have to|need to|will have to|'ll have to) (?:respectfully |politely )?decline\b".to_string(),
        // Policy language.
        r"\b(?:against|violates?|goes against) (?:my|our|the) (?:guidelines|policies|policy|usage polic(?:y|ies)|terms|principles|programming|values)\b".to_string(),
        r"\bi(?:'m| am) (?:not able|unable) to (?:help|assist|provide|comply)".to_string(),
        // A few other languages that make up a large share of traffic.
        r"\b(?:lo siento|disculpa)\b[^.!?]{0,40}\bno (?:puedo|podré) (?:ayudar|asistir|proporcionar|hacer eso)".to_string(),
        r"\bno puedo (?:ayudarte|ayudar con|proporcionar|asistir)".to_string(),
        r"\bje ne (?:peux|pourrai) pas (?:vous |t')?(?:aider|fournir|répondre|assister)".to_string(),
        r"\bich kann (?:dir |ihnen |euch )?(?:dabei |damit |hierbei )?(?:leider )?nicht (?:helfen|behilflich sein|unterstützen)".to_string(),
        r"\bnon posso (?:aiutarti|aiutare|fornire|assisterti)".to_string(),
        r"\bnão posso (?:ajudar|fornir|fornecer|auxiliar)".to_string(),
    ]
    .iter()
    .filter_map(|p| Regex::new(p).ok())
    .collect()
});

/// Phrases that contain a refusal pattern but are enthusiastic or idiomatic, not a decline.
static NOT_REFUSAL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:sure|of course|absolutely|certainly|yes|great|happy to|glad to|here's|here is)\b|\bi (?:can't|cannot|can not) help (?:but|thinking|feeling|noticing|wondering)\b",
    )
    .unwrap_or_else(|_| {
        // A pattern that cannot match: a failure to compile is a bug caught by the tests.
        Regex::new(r"[^\s\S]").unwrap_or_else(|_| unreachable!())
    })
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_compile() {
        assert_eq!(REFUSALS.len(), 13, "a refusal pattern failed to compile");
        assert_ne!(NOT_REFUSAL.as_str(), r"[^\s\S]");
    }

    #[test]
    fn refusals() {
        for t in [
            "I can't help with that.",
            "I can’t help with that request.",
            "I cannot assist with creating malware.",
            "I'm not able to provide instructions for that.",
            "I’m not able to provide that information.",
            "I won't do that.",
            "I won't help you stalk someone.",
            "Sorry, but I can't.",
            "Sorry, but I can’t help with this.",
            "I'm sorry, but I cannot fulfill this request.",
            "As an AI, I cannot browse the internet.",
            "As an AI language model, I don't have personal opinions on that.",
            "I'm afraid I can't do that, Dave.",
            "Unfortunately, I am unable to assist with that.",
            "I must decline this request.",
            "That's not something I can help with.",
            "This request goes against my guidelines.",
            "I understand you're frustrated. However, I can't help create fake reviews.",
            "I CANNOT HELP WITH THAT.",
            "I\u{200B} can't help with that.",
            "Lo siento, pero no puedo ayudar con eso.",
            "Je ne peux pas vous aider avec cette demande.",
            "Ich kann dir dabei leider nicht helfen.",
            "I'd rather not help with that.",
            "I don't feel comfortable writing that.",
        ] {
            assert!(assistant_refused(t), "missed refusal: {t:?}");
        }
    }

    #[test]
    fn non_refusals() {
        for t in [
            "",
            "   ",
            "Sure, here's how to do it.",
            "I can't wait to help!",
            "I cannot recommend this enough: use a virtual environment.",
            "I can't help but notice you're using an old version.",
            "Of course! I can't stress enough how useful this is.",
            "Here is the code you asked for.",
            "I can't believe how simple the fix is: change line 3.",
            "I won't bore you with the details; the short answer is yes.",
            "You can't use unwrap here because the value may be None.",
            "The function can't return a reference to a local variable.",
            "Certainly. Note that I cannot guarantee the API will not change.",
            "I can do that for you right away.",
            "Great question! I can definitely help with that.",
        ] {
            assert!(!assistant_refused(t), "false refusal: {t:?}");
        }
    }

    #[test]
    fn only_the_opening_counts() {
        let late = format!(
            "Here is the plan. First, install it. Then configure it. Finally, {}",
            "I can't help with deployment."
        );
        assert!(!assistant_refused(&late));
        let long_intro = "word ".repeat(200) + "I can't help with that.";
        assert!(!assistant_refused(&long_intro));
    }

    #[test]
    fn adversarial_input_never_panics() {
        let huge = "I ".repeat(1_000_000);
        for t in [
            "\u{202E}I can't help\u{202C}",
            "\u{0}\u{1}",
            "’’’’",
            "İ can't help with that",
            huge.as_str(),
        ] {
            let _ = assistant_refused(t);
        }
    }
}
