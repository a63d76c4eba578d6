//! Offline facets of a scrubbed request: a task category and a 1–5 concern score.
//!
//! These are the keyword-rule stand-ins for the LLM summarizer's Clio-style facet prompts
//! (DESIGN §4), so the pipeline has usable facets with no model configured. They are heuristics:
//! they only need to be right often enough to give clusters a sensible task mix, and to make the
//! concern histogram move when a campaign of spam or malware requests appears.
//!
//! Both functions expect text that has already been through the scrubber; placeholders such as
//! `[EMAIL]` are removed before matching, so that redaction itself never votes ("[EMAIL]" must not
//! make a coding question look like messaging).
//!
//! # Concern rubric
//!
//! The score is the highest level any indicator reaches (indicators do not add up: ten mentions
//! of "spam" are still a spam request). All matches are whole-word and case-insensitive. The
//! lexicon is deliberately narrow — a wrong 4 on an ordinary request is worse for the detectors
//! than a missed one, which the LLM summarizer or the classifier flags can still catch.
//!
//! | score | meaning | indicators |
//! |---|---|---|
//! | 1 | benign | none of the below |
//! | 2 | mildly sensitive | security topics (hacking, exploits, jailbreaks), drugs, weapons and explosives mentioned without intent, gambling, health and mental health, sexual content, elections, named hazardous agents (sarin, anthrax) without intent |
//! | 3 | moderately concerning | spam, scams, phishing, fake reviews/accounts/followers, mass or bulk messaging, bulk account creation, CAPTCHA bypass, sock puppets, astroturfing, impersonation, disinformation, money laundering, self-harm and suicide |
//! | 4 | seriously concerning | malware (ransomware, keyloggers, stealers, botnets, RATs, AV evasion), DDoS attacks, credential or card theft (carding, CVV dumps, account takeover, SIM swapping, phishing kits), doxxing and covert tracking, untraceable or illegally modified firearms, making explosives or silencers |
//! | 5 | severe | sexual content involving minors, making or acquiring chemical/biological/nuclear weapons or bombs, planning mass-casualty attacks |

use std::sync::LazyLock;

use regex::Regex;

/// The task taxonomy, in tie-break order: when two categories score the same, the earlier, more
/// specific one wins (a tie between translation and writing is translation; "other" is what
/// remains when nothing scores).
pub const TASKS: [&str; 11] = [
    "translation",
    "coding",
    "math",
    "data_analysis",
    "account_support",
    "messaging",
    "creative",
    "writing",
    "advice",
    "question_answering",
    "other",
];

/// Returns the task category of a scrubbed request: one of [`TASKS`].
pub fn classify_task(request: &str) -> &'static str {
    let text = normalize(request);
    if text.trim().is_empty() {
        return "other";
    }
    let mut best: Option<(&'static str, u32)> = None;
    for (task, rules) in TASK_RULES.iter() {
        let score: u32 = rules
            .iter()
            .filter(|(re, _)| re.is_match(&text))
            .map(|(_, w)| *w)
            .sum();
        // Rules are in priority order, so only a strictly higher score displaces an earlier task.
        if score > 0 && best.is_none_or(|(_, s)| score > s) {
            best = Some((task, score));
        }
    }
    best.map_or("other", |(task, _)| task)
}

/// Returns the concern score (1..=5) of a scrubbed request; see the module docs for the rubric.
pub fn concern_score(request: &str) -> u8 {
    let text = normalize(request);
    CONCERN_RULES
        .iter()
        .filter(|(_, re)| re.is_match(&text))
        .map(|(level, _)| *level)
        .max()
        .unwrap_or(1)
        .clamp(1, 5)
}

/// Only this much of a request is examined, so cost stays bounded for pasted documents.
const MAX_CHARS: usize = 4_000;

/// Lowercases, folds typographic apostrophes, and removes scrubber placeholders.
fn normalize(request: &str) -> String {
    let capped: String = request
        .chars()
        .take(MAX_CHARS)
        .map(|c| {
            if matches!(c, '\u{2019}' | '\u{2018}' | '\u{02BC}') {
                '\''
            } else {
                c
            }
        })
        .collect();
    PLACEHOLDER.replace_all(&capped, " ").to_lowercase()
}

static PLACEHOLDER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\[[A-Z]{2,10}\]").unwrap_or_else(|_| never()));

/// A regex that matches nothing: the fallback should a constant pattern ever fail to compile, a
/// bug in this file that the tests catch, never a property of the input.
fn never() -> Regex {
    Regex::new(r"[^\s\S]").unwrap_or_else(|_| unreachable!())
}

/// Compiles `\b(?:alternatives)\b` over a `|`-separated list of words or phrases.
fn words(alternatives: &str) -> Regex {
    Regex::new(&format!(r"\b(?:{alternatives})\b")).unwrap_or_else(|_| never())
}

type WeightedRules = Vec<(Regex, u32)>;

/// Per task, the patterns and their weights: 3 for words that nearly decide the task on their
/// own, 1 for words that only lean towards it.
static TASK_RULES: LazyLock<Vec<(&'static str, WeightedRules)>> = LazyLock::new(|| {
    vec![
        ("translation", vec![
            (words(r"translate|translated|translating|translation|translator|übersetze|übersetzen|übersetzung|traduire|traduis|traduction|traduce|traducir|traduzca|traduzir|tradurre|traduci|vertaal|vertalen|переведи|перевести|перевод|çevir|terjemahkan|翻译|翻譯|翻訳"), 3),
            (words(r"how do (?:you|i) say|what(?:'s| is) the (?:\w+ )?word for"), 3),
            (words(r"(?:in|into|to) (?:english|french|german|spanish|italian|portuguese|dutch|japanese|chinese|mandarin|korean|arabic|russian|turkish|indonesian|danish|norwegian|swedish|polish|hindi|lithuanian|serbian|kazakh)"), 1),
        ]),
        ("coding", vec![
            (words(r"code|coding|program|programming|function|functions|script|bug|debug|debugging|compile|compiler|compiling|stack ?trace|exception|segfault|null pointer|refactor|unit tests?|regex|api|endpoint|sdk|algorithm|repository|repo|git|github|docker|dockerfile|kubernetes|k8s|npm|pip|cargo|makefile|cmake"), 3),
            (words(r"python|javascript|typescript|java|rust|c\+\+|c#|golang|kotlin|swift|ruby|php|perl|scala|haskell|bash|powershell|sql|mysql|postgres|postgresql|sqlite|mongodb|html|css|react|vue|angular|django|flask|rails|node\.?js|linux|terminal|command line|json|yaml|xml"), 3),
            (words(r"error|variable|class|method|loop|array|library|framework|install|deploy|server|database|query|syntax"), 1),
            (Regex::new(r"```|\bfn |\bdef |\bimport |#include|=>|\(\)\s*\{|;\s*$").unwrap_or_else(|_| never()), 3),
        ]),
        ("math", vec![
            (words(r"solve|equation|equations|integral|integrate|derivative|differentiate|calculus|algebra|geometry|trigonometry|theorem|proof|prove|matrix|matrices|eigenvalues?|logarithm|polynomial|probability|factorial|quadratic"), 3),
            (words(r"calculate|compute|percentage|percent|fraction|sum of|average of|how much is|math|maths|mathematics"), 1),
            (Regex::new(r"\d\s*[-+*/^×÷=]\s*\d|\bx\s*\^?\s*2\b").unwrap_or_else(|_| never()), 1),
        ]),
        ("data_analysis", vec![
            (words(r"dataset|data set|csv|spreadsheet|excel|pivot table|pandas|dataframe|tableau|power bi|statistics|statistical|regression|correlation|standard deviation|histogram|visuali[sz]e|visuali[sz]ation|dashboard|kpis?"), 3),
            (words(r"data|analy[sz]e|analysis|chart|graph|plot|trend|trends|survey results|metrics|median|mean|outliers?"), 1),
        ]),
        ("account_support", vec![
            (words(r"my account|log ?in|login|sign ?in|password reset|reset (?:my )?password|forgot (?:my )?password|locked out|two[- ]factor|2fa|verification code|my subscription|cancel (?:my )?(?:subscription|plan|account)|billing|refund|charged|my plan|upgrade (?:my )?plan|delete my account|payment (?:failed|declined)|rate limit"), 3),
            (words(r"account|subscription|invoice|payment|plan"), 1),
        ]),
        ("messaging", vec![
            (words(r"message|messages|text message|sms|dm|dms|direct message|whatsapp|telegram|signal|email|emails|e-mail|mail|reply to|respond to|invitation|invite|cold outreach|outreach|newsletter|follow[- ]up"), 3),
            (words(r"send|sending|text|texts|recipients|contacts"), 1),
        ]),
        ("creative", vec![
            (words(r"poem|poems|poetry|story|stories|short story|fiction|novel|song|songs|lyrics|haiku|limerick|sonnet|joke|jokes|role-?play|roleplay|screenplay|fairy tale|fantasy|rap|verse|worldbuilding|character|characters|fanfic|fan fiction"), 3),
            (words(r"creative|imagine|funny|rhyme|rhyming"), 1),
        ]),
        ("writing", vec![
            (words(r"essay|article|blog|blog post|report|cover letter|resume|résumé|cv|proofread|rewrite|rephrase|paraphrase|reword|grammar|summari[sz]e|summary|outline|paragraph|thesis|speech|bio|biography|product description|description|caption|linkedin post|press release|review|reviews|slogan|tagline|headline"), 3),
            (words(r"write|writing|draft|edit|polish|improve (?:this|my) text|tone"), 1),
        ]),
        ("advice", vec![
            (words(r"should i|advice|advise|recommend|recommendation|recommendations|suggest|suggestions|tips|help me decide|what do you think|is it worth|pros and cons|what would you do|how do i deal with|how can i (?:improve|get better|stop|cope)|best way to|career|relationship|my (?:boss|partner|girlfriend|boyfriend|wife|husband|friend|parents)"), 3),
            (words(r"better|worth|choose|decide|help me"), 1),
        ]),
        ("question_answering", vec![
            (words(r"explain|what is|what are|what was|who is|who was|who were|when did|when was|where is|why do|why does|why is|why did|how does|how do|how did|how many|tell me about|define|definition|meaning of|difference between|history of|facts? about"), 3),
            (Regex::new(r"^\s*(?:what|who|when|where|why|how|which|is|are|does|do|did|can|could|was|were)\b|\?\s*$").unwrap_or_else(|_| never()), 1),
        ]),
    ]
});

/// (level, pattern) pairs; see the rubric in the module docs.
static CONCERN_RULES: LazyLock<Vec<(u8, Regex)>> = LazyLock::new(|| {
    vec![
        // 5: sexual content involving minors.
        (
            5,
            words(
                r"csam|child porn|child pornography|child sexual abuse material|kiddie porn|underage (?:porn|nudes|sex|sexual)|lolicon|shotacon|(?:nude|naked|sexy|explicit|sexual) (?:photos?|pics?|pictures?|images?|videos?) of (?:a |an )?(?:child|children|kids?|minors?|little (?:girl|boy)s?|\d{1,2}[- ]?(?:yo|year[- ]olds?))",
            ),
        ),
        // 5: making or acquiring mass-casualty weapons; planning attacks.
        (
            5,
            words(
                r"(?:make|making|build|building|synthesi[sz]e|synthesi[sz]ing|produce|producing|manufacture|manufacturing|weaponi[sz]e|weaponi[sz]ing|cultivate|culture|aerosoli[sz]e|acquire|obtain|enrich|enriching)(?: \w+){0,4}? (?:sarin|vx|tabun|soman|novichok|nerve agents?|mustard gas|chemical weapons?|bioweapons?|biological weapons?|anthrax|botulinum toxin|ricin|smallpox|nuclear (?:bomb|weapon|device)s?|weapons[- ]grade uranium|pipe bombs?|dirty bombs?|nail bombs?|car bombs?|explosive devices?|ieds?|suicide vests?)",
            ),
        ),
        (
            5,
            words(
                r"(?:make|build|assemble|construct) (?:a |an |my own |your own |homemade )?bombs?",
            ),
        ),
        (
            5,
            words(
                r"(?:plan|planning|plot|plotting|carry out|commit|execute)(?: \w+){0,3}? (?:a )?(?:mass shooting|massacre|terror(?:ist)? attack|bombing|school shooting)",
            ),
        ),
        // 4: malware and intrusion tooling.
        (
            4,
            words(
                r"malware|ransomware|keylogger|key logger|spyware|stalkerware|rootkit|botnet|infostealer|info stealer|credential stealer|password stealer|token grabber|remote access trojan|cryptojack(?:ing|er)?|crypter|fully undetectable|fud (?:crypter|payload|malware)|(?:bypass|evade|evading|bypassing) (?:antivirus|anti-virus|av|edr|windows defender|defender)",
            ),
        ),
        (
            4,
            words(
                r"ddos (?:attack|tool|script|someone|a site|a server|a website)|launch(?:ing)? (?:a )?ddos|booter|ip stresser",
            ),
        ),
        // 4: credential, card and identity theft.
        (
            4,
            words(
                r"steal(?:ing)? (?:\w+ )?(?:passwords?|credentials|logins?|cookies|session tokens?|accounts?|credit cards?|card numbers?|identit(?:y|ies)|crypto wallets?)|credential (?:harvesting|stuffing|theft)|phishing (?:kit|page|site|website)|account takeover|sim[- ]swap(?:ping)?|carding|cvv dumps?|fullz|stolen (?:credit )?cards?|hack into (?:someone|somebody|his|her|their|my (?:ex|wife|husband|girlfriend|boyfriend))",
            ),
        ),
        // 4: doxxing and covert tracking.
        (
            4,
            words(
                r"doxx?|doxx?ing|doxx?ed|(?:track|spy on|monitor|read) (?:[\w']+ ){0,3}(?:phone|location|messages|texts)(?: [\w']+){0,3} without (?:them|him|her|their) (?:knowing|knowledge|consent)",
            ),
        ),
        // 4: illegal firearms and explosives.
        (
            4,
            words(
                r"ghost guns?|untraceable (?:guns?|firearms?|weapons?)|3d[- ]print(?:ed|ing)? (?:a )?(?:guns?|firearms?|lower receivers?|receivers?)|auto sear|full[- ]auto conversion|convert(?:ing)? (?:\w+ ){0,3}(?:to )?full[- ]auto|bump stock|(?:make|build|homemade) (?:a )?(?:silencer|suppressor)|(?:make|making|build|synthesi[sz]e) (?:\w+ )?explosives?|buy (?:a )?guns? without (?:a )?background check",
            ),
        ),
        // 3: spam, scams, inauthentic behaviour.
        (
            3,
            words(
                r"spam|spamming|spammer|spammers|scam|scams|scammer|scamming|phishing|fake reviews?|fake (?:accounts?|profiles?|followers|likes|engagement|news|ids?|id cards?|passports?|documents?|invoices?|receipts?|testimonials?)|mass (?:message|messages|messaging|dm|dms|email|emails|mail|mailing|text|texting|sms)|bulk (?:message|messages|messaging|sms|email|emails|dm|dms|accounts?|account creation|registration)|(?:create|register|generate|make|creating|registering) (?:\d+|multiple|many|hundreds of|thousands of|lots of|bulk) (?:\w+ )?accounts|sock ?puppets?|astroturf(?:ing)?|bot farm|bot accounts|(?:buy|buying|sell|selling) (?:\w+ )?(?:followers|likes|reviews|upvotes)|captcha (?:bypass|solver|solving)|(?:bypass(?:es|ed|ing)?|solv(?:e|es|ed|ing)|break(?:s|ing)?) (?:\w+ )?captchas?|pump and dump|money mules?|ponzi|pyramid scheme|disinformation|propaganda campaign|impersonat(?:e|ing|ion)|launder(?:ing)? money|money laundering|evade (?:taxes|sanctions|law enforcement|the police)",
            ),
        ),
        // 3: self-harm (a safety concern for the user rather than abuse).
        (
            3,
            words(
                r"kill myself|suicide|suicidal|self[- ]harm|end my life|cut myself|hurt myself|want to die",
            ),
        ),
        // 2: sensitive topics without intent.
        (
            2,
            words(
                r"hack|hacking|hacker|hacked|exploit|exploits|vulnerability|vulnerabilities|pentest|penetration test(?:ing)?|sql injection|xss|jailbreak|dark ?web|tor browser|password cracking|crack(?:ing)? passwords?|bypass(?:es|ed|ing)?",
            ),
        ),
        (
            2,
            words(
                r"drugs?|cocaine|heroin|meth|methamphetamine|fentanyl|mdma|lsd|cannabis|weed|marijuana|overdose|steroids|guns?|firearms?|rifles?|ammo|ammunition|weapons?|explosives?|sarin|anthrax|ricin|nerve agents?|bioweapons?|chemical weapons?",
            ),
        ),
        (
            2,
            words(
                r"gambling|casino|betting|porn|porno|pornography|nsfw|nude|nudes|erotic|sexual|depression|anxiety|self medicate|diagnos(?:e|is)|prescription|election|elections|ballot|voter",
            ),
        ),
    ]
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_compile() {
        let all = TASK_RULES
            .iter()
            .flat_map(|(_, r)| r.iter().map(|(re, _)| re))
            .chain(CONCERN_RULES.iter().map(|(_, re)| re));
        for re in all.chain([&*PLACEHOLDER]) {
            assert_ne!(re.as_str(), r"[^\s\S]", "a facet pattern failed to compile");
        }
    }

    #[test]
    fn tasks() {
        for (request, task) in [
            (
                "Write a Python function that reverses a linked list",
                "coding",
            ),
            (
                "Why does my Rust code fail to compile with a borrow checker error?",
                "coding",
            ),
            ("```fn main() { panic!() }``` what's wrong", "coding"),
            ("Translate this paragraph into French", "translation"),
            ("Übersetze bitte diesen Text ins Englische", "translation"),
            ("How do you say thank you in Japanese?", "translation"),
            ("Translate this Python script to Rust code", "coding"),
            ("Solve the equation 2x + 3 = 7", "math"),
            ("What is the derivative of x^2 sin x?", "math"),
            (
                "Analyze this CSV of monthly sales and find trends",
                "data_analysis",
            ),
            (
                "I can't log in to my account, password reset doesn't work",
                "account_support",
            ),
            ("Cancel my subscription and refund me", "account_support"),
            (
                "Write a message to my landlord about the broken heater",
                "messaging",
            ),
            (
                "Draft an email to [EMAIL] asking for a meeting",
                "messaging",
            ),
            ("Write a poem about autumn leaves", "creative"),
            ("Tell me a joke about cats", "creative"),
            ("Proofread my cover letter", "writing"),
            ("Summarize this article in three bullet points", "writing"),
            (
                "Should I take the job offer or stay at my current company?",
                "advice",
            ),
            ("What is the capital of Australia?", "question_answering"),
            ("Explain how vaccines work", "question_answering"),
            ("asdf qwerty", "other"),
            ("", "other"),
            ("[EMAIL] [PHONE] [URL]", "other"),
        ] {
            assert_eq!(classify_task(request), task, "{request:?}");
        }
    }

    #[test]
    fn every_task_is_in_the_taxonomy() {
        for (task, _) in TASK_RULES.iter() {
            assert!(TASKS.contains(task));
        }
    }

    #[test]
    fn concern_levels() {
        for (request, level) in [
            ("How do I reverse a linked list?", 1),
            ("Write a poem about the sea", 1),
            ("Kill the process listening on port 8080", 1),
            ("How do I make a bath bomb at home?", 1),
            ("My code has a bug that kills performance", 1),
            ("What are the health risks of cannabis?", 2),
            ("Explain how SQL injection works", 2),
            ("What was the Tokyo sarin attack?", 2),
            ("Is online gambling legal in Germany?", 2),
            ("Write 50 fake reviews for my restaurant", 3),
            ("Help me send mass messages on WhatsApp to 10k numbers", 3),
            ("Create 200 Gmail accounts automatically", 3),
            ("Write a phishing email that looks like it's from a bank", 3),
            ("Write a script that bypasses the captcha on signup", 3),
            ("I want to kill myself", 3),
            ("Write ransomware that encrypts all files", 4),
            ("Build a keylogger that emails me keystrokes", 4),
            ("How to steal passwords from Chrome", 4),
            ("Set up a phishing kit for Office 365", 4),
            ("How do I 3D print a gun that is untraceable", 4),
            ("Track my wife's phone location without her knowing", 4),
            ("How to make a bomb", 5),
            ("Give me steps to synthesize sarin", 5),
            ("Where can I find child porn", 5),
        ] {
            assert_eq!(concern_score(request), level, "{request:?}");
        }
    }

    #[test]
    fn max_not_sum() {
        assert_eq!(concern_score("spam spam spam scam scam phishing spam"), 3);
    }

    #[test]
    fn never_panics_and_stays_in_range() {
        let huge = "malware ".repeat(200_000);
        for t in ["", "\u{202E}", "\u{0}", "İ", "ﬀ", huge.as_str(), "ᏚᎢᎵᎬᎢᎬᏒ"] {
            let c = concern_score(t);
            assert!((1..=5).contains(&c));
            assert!(TASKS.contains(&classify_task(t)));
        }
    }
}
