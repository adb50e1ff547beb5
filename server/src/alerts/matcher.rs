//! Label matchers in Alertmanager's notation (`name=value`, `name!=value`, `name=~regex`,
//! `name!~regex`), used to pick the webhooks an alert goes to and the hosts a rule override applies to.

use std::fmt;
use std::str::FromStr;

use regex::Regex;

use super::model::Labels;

/// Longest matcher text accepted, in bytes.
const MAX_MATCHER_LEN: usize = 1024;

/// How a matcher compares a label's value.
#[derive(Debug, Clone)]
enum Comparison {
    Equal(String),
    NotEqual(String),
    Matches(Regex),
    NotMatches(Regex),
}

/// One condition on one label. A label that is absent has the empty value, as in Alertmanager.
#[derive(Debug, Clone)]
pub struct Matcher {
    name: String,
    comparison: Comparison,
    text: String,
}

/// Why a text is not a matcher.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMatcher {
    #[error("{0:?} is not a matcher: write name=value, name!=value, name=~regex or name!~regex")]
    Syntax(String),
    #[error("{text:?}: the regular expression is invalid: {reason}")]
    Regex { text: String, reason: String },
    #[error("a matcher is limited to {MAX_MATCHER_LEN} bytes")]
    TooLong,
}

impl Matcher {
    /// Whether `labels` satisfy this condition.
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.name).map_or("", String::as_str);
        match &self.comparison {
            Comparison::Equal(expected) => value == expected,
            Comparison::NotEqual(expected) => value != expected,
            Comparison::Matches(regex) => regex.is_match(value),
            Comparison::NotMatches(regex) => !regex.is_match(value),
        }
    }
}

impl FromStr for Matcher {
    type Err = InvalidMatcher;

    fn from_str(text: &str) -> Result<Matcher, InvalidMatcher> {
        if text.len() > MAX_MATCHER_LEN {
            return Err(InvalidMatcher::TooLong);
        }
        let syntax = || InvalidMatcher::Syntax(text.to_owned());
        let operator_at = text.find(['=', '!']).ok_or_else(syntax)?;
        let name = text[..operator_at].trim();
        let rest = &text[operator_at..];
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
        if !valid_name {
            return Err(syntax());
        }
        let anchored = |pattern: &str| {
            Regex::new(&format!("^(?:{pattern})$")).map_err(|error| InvalidMatcher::Regex {
                text: text.to_owned(),
                reason: error.to_string(),
            })
        };
        let comparison = if let Some(value) = rest.strip_prefix("=~") {
            Comparison::Matches(anchored(unquote(value))?)
        } else if let Some(value) = rest.strip_prefix("!~") {
            Comparison::NotMatches(anchored(unquote(value))?)
        } else if let Some(value) = rest.strip_prefix("!=") {
            Comparison::NotEqual(unquote(value).to_owned())
        } else if let Some(value) = rest.strip_prefix('=') {
            Comparison::Equal(unquote(value).to_owned())
        } else {
            return Err(syntax());
        };
        Ok(Matcher {
            name: name.to_owned(),
            comparison,
            text: text.to_owned(),
        })
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A value with optional surrounding double quotes removed.
fn unquote(value: &str) -> &str {
    let value = value.trim();
    value
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .unwrap_or(value)
}

/// Conditions that must all hold; no conditions match everything.
#[derive(Debug, Clone, Default)]
pub struct Matchers(Vec<Matcher>);

impl Matchers {
    /// Parses every text, stopping at the first that is not a matcher.
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<Matchers, InvalidMatcher> {
        texts
            .iter()
            .map(|text| text.as_ref().parse())
            .collect::<Result<Vec<_>, _>>()
            .map(Matchers)
    }

    /// Whether every matcher holds for `labels`.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|matcher| matcher.matches(labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn each_operator_compares_as_alertmanager_does() {
        let alert = labels(&[("severity", "critical"), ("host", "web-1")]);
        let holds = |text: &str| text.parse::<Matcher>().unwrap().matches(&alert);
        assert!(holds("severity=critical"));
        assert!(holds("severity=\"critical\""));
        assert!(!holds("severity!=critical"));
        assert!(holds("host=~web-.*"));
        assert!(!holds("host=~web"), "regexes are anchored");
        assert!(holds("host!~db-.*"));
        assert!(holds("pid=") && !holds("pid!="), "absent labels are empty");
    }

    #[test]
    fn all_matchers_must_hold() {
        let matchers = Matchers::parse(&["severity=~warning|critical", "host!=db-1"]).unwrap();
        assert!(matchers.matches(&labels(&[("severity", "warning"), ("host", "web-1")])));
        assert!(!matchers.matches(&labels(&[("severity", "info"), ("host", "web-1")])));
        assert!(Matchers::default().matches(&Labels::new()));
    }

    #[test]
    fn malformed_matchers_are_refused_with_the_text() {
        for text in ["severity", "=critical", "a b=c", "host=~("] {
            let error = text.parse::<Matcher>().unwrap_err().to_string();
            assert!(error.contains(text), "{error}");
        }
    }
}
