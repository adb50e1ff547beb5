//! The `[alerts]`, `[[webhooks]]` and `[delivery]` sections of the server's TOML file, and their
//! validation into the [`AlertingConfig`] the server runs with.
//!
//! Every error names the full key (`alerts.overrides[0].rules.CloseWaitHigh.warning`) and the value
//! that was refused; a webhook's secret (and its URL, which for Slack is a secret too) is never shown.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::matcher::Matchers;
use super::model::{Labels, RuleName, Severity};
use super::settings::{Levels, Rules};
use crate::webhook::{DeliverySettings, Grouping, SigningSecret, WebhookFormat, WebhookTarget};

const MAX_OVERRIDES: usize = 64;
const MAX_WEBHOOKS: usize = 32;
const MAX_WEBHOOK_NAME: usize = 64;
const MAX_SYSCTL_NAME: usize = 128;
const MAX_LABEL_NAME: usize = 64;
/// Largest CLOSE_WAIT level (sockets).
const MAX_COUNT_LEVEL: f64 = 10_000_000.0;

const MILLISECOND: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// The `[alerts]` section: whether rules run, the rules' settings and per-host overrides.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsFile {
    enabled: Option<bool>,
    external_url: Option<String>,
    #[serde(default)]
    rules: BTreeMap<String, toml::Table>,
    #[serde(default)]
    overrides: Vec<OverrideFile>,
}

/// One `[[alerts.overrides]]`: rule settings for the hosts whose labels match.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideFile {
    #[serde(rename = "match")]
    matchers: Option<Vec<String>>,
    #[serde(default)]
    rules: BTreeMap<String, toml::Table>,
}

/// One `[[webhooks]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFile {
    name: Option<String>,
    url: Option<Redacted>,
    format: Option<String>,
    secret: Option<Redacted>,
    secret_file: Option<PathBuf>,
    #[serde(rename = "match", default)]
    matchers: Vec<String>,
    send_resolved: Option<bool>,
    group_by: Option<Vec<String>>,
    group_wait: Option<String>,
    group_interval: Option<String>,
    repeat_interval: Option<String>,
}

/// The `[delivery]` section: timeouts and retries of webhook deliveries.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryFile {
    timeout: Option<String>,
    retry_initial: Option<String>,
    retry_max: Option<String>,
    give_up_after: Option<String>,
}

/// A text that is never shown by `Debug` (a secret, or a URL that may carry one).
#[derive(Deserialize)]
#[serde(transparent)]
struct Redacted(String);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why the alerting configuration was refused: a message that names the key and the bad value (never
/// a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

type Result<T> = std::result::Result<T, ConfigError>;

/// Everything about alerting the server runs with.
#[derive(Debug, Clone)]
pub struct AlertingConfig {
    /// Whether rules are evaluated at all.
    pub enabled: bool,
    /// The server's address for people (no trailing `/`), put in webhook bodies.
    pub external_url: Option<String>,
    pub rules: RuleBook,
    pub webhooks: Vec<WebhookTarget>,
    pub delivery: DeliverySettings,
}

impl Default for AlertingConfig {
    /// Rules on with their defaults, no webhooks, default delivery.
    fn default() -> AlertingConfig {
        AlertingConfig {
            enabled: true,
            external_url: None,
            rules: RuleBook::default(),
            webhooks: Vec::new(),
            delivery: DeliverySettings::default(),
        }
    }
}

impl AlertingConfig {
    /// Validates the three file sections. A relative `secret_file` is read from `base_dir` (the config
    /// file's folder) when given, else from the working directory.
    pub fn from_files(
        alerts: AlertsFile,
        webhooks: Vec<WebhookFile>,
        delivery: DeliveryFile,
        base_dir: Option<&Path>,
    ) -> std::result::Result<AlertingConfig, ConfigError> {
        let external_url = alerts
            .external_url
            .as_deref()
            .map(|raw| external_url(raw, "alerts.external_url"))
            .transpose()?;
        let rules = RuleBook::from_file(&alerts.rules, &alerts.overrides)?;
        Ok(AlertingConfig {
            enabled: alerts.enabled.unwrap_or(true),
            external_url,
            rules,
            webhooks: webhook_targets(webhooks, base_dir)?,
            delivery: delivery_settings(&delivery)?,
        })
    }
}

/// The base rules plus overrides by host label.
#[derive(Debug, Clone, Default)]
pub struct RuleBook {
    base: Rules,
    overrides: Vec<Override>,
}

/// One validated `[[alerts.overrides]]`.
#[derive(Debug, Clone)]
struct Override {
    matchers: Matchers,
    patches: Vec<(RuleName, RulePatch)>,
}

impl RuleBook {
    /// The rules for a host: the base, then every override whose matchers hold for `labels`, in file
    /// order (later wins).
    pub fn for_host(&self, labels: &Labels) -> Rules {
        let mut rules = self.base.clone();
        for applying in self.overrides.iter().filter(|o| o.matchers.matches(labels)) {
            for (rule, patch) in &applying.patches {
                patch.apply(&mut rules, *rule);
            }
        }
        rules
    }

    /// The rules of a host that no override matches.
    pub fn base(&self) -> &Rules {
        &self.base
    }

    fn from_file(
        rules: &BTreeMap<String, toml::Table>,
        overrides: &[OverrideFile],
    ) -> Result<RuleBook> {
        let mut base = Rules::default();
        for (rule, patch, path) in rule_patches("alerts.rules", rules, false)? {
            patch.apply(&mut base, rule);
            check_levels(&path, rule, &patch, &base)?;
        }
        if overrides.len() > MAX_OVERRIDES {
            return Err(ConfigError(format!(
                "alerts.overrides: at most {MAX_OVERRIDES} overrides are allowed (got {})",
                overrides.len()
            )));
        }
        let overrides = overrides
            .iter()
            .enumerate()
            .map(|(index, file)| override_from_file(index, file, &base))
            .collect::<Result<Vec<_>>>()?;
        Ok(RuleBook { base, overrides })
    }
}

fn override_from_file(index: usize, file: &OverrideFile, base: &Rules) -> Result<Override> {
    let prefix = format!("alerts.overrides[{index}]");
    let texts = file.matchers.as_deref().unwrap_or_default();
    if texts.is_empty() {
        return Err(ConfigError(format!(
            "{prefix}.match must list at least one host-label matcher (settings for every host \
             belong in alerts.rules)"
        )));
    }
    let matchers = matchers(texts, &format!("{prefix}.match"))?;
    let mut patches = Vec::new();
    for (rule, mut patch, path) in rule_patches(&format!("{prefix}.rules"), &file.rules, true)? {
        let mut applied = base.clone();
        patch.apply(&mut applied, rule);
        check_levels(&path, rule, &patch, &applied)?;
        // Kept to fall back on when this override and an earlier one together break a level rule
        // (e.g. one raises warning, the other lowers critical below it).
        patch.levels_fallback = levels_of(&applied, rule).map(LevelsState::of);
        patches.push((rule, patch));
    }
    Ok(Override { matchers, patches })
}

/// The enabled flag and levels of a level rule: what must stay consistent as a whole.
#[derive(Debug, Clone, Copy)]
struct LevelsState {
    enabled: bool,
    warning: Option<f64>,
    critical: Option<f64>,
}

impl LevelsState {
    fn of(levels: &Levels) -> LevelsState {
        LevelsState {
            enabled: levels.enabled,
            warning: levels.warning,
            critical: levels.critical,
        }
    }

    fn is_consistent(self) -> bool {
        let ordered = match (self.warning, self.critical) {
            (Some(warning), Some(critical)) => warning < critical,
            _ => true,
        };
        let has_level = !self.enabled || self.warning.is_some() || self.critical.is_some();
        ordered && has_level
    }
}

/// The settings one table of one rule sets; keys that do not apply to the rule's kind are refused
/// when it is read, so the others stay `None`.
#[derive(Debug, Clone, Default)]
struct RulePatch {
    enabled: Option<bool>,
    /// `Some(None)`: the level is switched off.
    warning: Option<Option<f64>>,
    critical: Option<Option<f64>>,
    fire_after: Option<u32>,
    resolve_after: Option<u32>,
    clear_ratio: Option<f64>,
    severity: Option<Severity>,
    window: Option<Duration>,
    factor: Option<f64>,
    min: Option<u64>,
    baseline: Option<Duration>,
    min_samples: Option<u32>,
    min_age: Option<Duration>,
    samples: Option<u32>,
    min_growth: Option<u32>,
    ignore: Option<BTreeSet<String>>,
    group_labels: Option<Vec<String>>,
    min_hosts: Option<u32>,
    intervals: Option<u32>,
    /// For an override of a level rule: the rule's state when the override alone is applied to the
    /// base (validated), used when the override combined with earlier ones would be inconsistent.
    levels_fallback: Option<LevelsState>,
}

fn set<T: Clone>(target: &mut T, value: &Option<T>) {
    if let Some(value) = value {
        *target = value.clone();
    }
}

impl RulePatch {
    fn apply(&self, rules: &mut Rules, rule: RuleName) {
        match rule {
            RuleName::TimeWaitBucketPressure => {
                self.apply_levels(&mut rules.time_wait_bucket_pressure)
            }
            RuleName::EphemeralPortPressure => {
                self.apply_levels(&mut rules.ephemeral_port_pressure)
            }
            RuleName::CloseWaitHigh => self.apply_levels(&mut rules.close_wait_high),
            RuleName::OrphanPressure => self.apply_levels(&mut rules.orphan_pressure),
            RuleName::TimeWaitOverflow | RuleName::ListenQueueOverflow => {
                let target = if rule == RuleName::TimeWaitOverflow {
                    &mut rules.time_wait_overflow
                } else {
                    &mut rules.listen_queue_overflow
                };
                set(&mut target.enabled, &self.enabled);
                set(&mut target.severity, &self.severity);
                set(&mut target.window, &self.window);
                set(&mut target.resolve_after, &self.resolve_after);
            }
            RuleName::TimeWaitSpike => {
                let target = &mut rules.time_wait_spike;
                set(&mut target.enabled, &self.enabled);
                set(&mut target.severity, &self.severity);
                set(&mut target.factor, &self.factor);
                set(&mut target.min, &self.min);
                set(&mut target.baseline, &self.baseline);
                set(&mut target.hysteresis.fire_after, &self.fire_after);
                set(&mut target.hysteresis.resolve_after, &self.resolve_after);
                set(&mut target.hysteresis.clear_ratio, &self.clear_ratio);
            }
            RuleName::CloseWaitStuck => {
                let target = &mut rules.close_wait_stuck;
                set(&mut target.enabled, &self.enabled);
                set(&mut target.severity, &self.severity);
                set(&mut target.min_samples, &self.min_samples);
                set(&mut target.min_age, &self.min_age);
            }
            RuleName::CloseWaitLeak => {
                let target = &mut rules.close_wait_leak;
                set(&mut target.enabled, &self.enabled);
                set(&mut target.severity, &self.severity);
                set(&mut target.samples, &self.samples);
                set(&mut target.min_growth, &self.min_growth);
                set(&mut target.resolve_after, &self.resolve_after);
            }
            RuleName::SysctlMisconfig => {
                let target = &mut rules.sysctl_misconfig;
                set(&mut target.enabled, &self.enabled);
                set(&mut target.ignore, &self.ignore);
            }
            RuleName::SysctlDrift => {
                let target = &mut rules.sysctl_drift;
                set(&mut target.enabled, &self.enabled);
                set(&mut target.severity, &self.severity);
                set(&mut target.group_labels, &self.group_labels);
                set(&mut target.min_hosts, &self.min_hosts);
                set(&mut target.ignore, &self.ignore);
            }
            RuleName::AgentSilent => {
                let target = &mut rules.agent_silent;
                set(&mut target.enabled, &self.enabled);
                set(&mut target.severity, &self.severity);
                set(&mut target.intervals, &self.intervals);
            }
        }
    }

    fn apply_levels(&self, levels: &mut Levels) {
        set(&mut levels.enabled, &self.enabled);
        set(&mut levels.warning, &self.warning);
        set(&mut levels.critical, &self.critical);
        set(&mut levels.hysteresis.fire_after, &self.fire_after);
        set(&mut levels.hysteresis.resolve_after, &self.resolve_after);
        set(&mut levels.hysteresis.clear_ratio, &self.clear_ratio);
        if let Some(fallback) = self.levels_fallback
            && !LevelsState::of(levels).is_consistent()
        {
            levels.enabled = fallback.enabled;
            levels.warning = fallback.warning;
            levels.critical = fallback.critical;
        }
    }
}

/// The kinds of rule, by the settings they take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Levels on a ratio in (0, 1].
    Ratio,
    /// Levels on a socket count.
    Count,
    Counter,
    Spike,
    Stuck,
    Leak,
    Sysctl,
    Drift,
    Silent,
}

impl Kind {
    const fn of(rule: RuleName) -> Kind {
        match rule {
            RuleName::TimeWaitBucketPressure
            | RuleName::EphemeralPortPressure
            | RuleName::OrphanPressure => Kind::Ratio,
            RuleName::CloseWaitHigh => Kind::Count,
            RuleName::TimeWaitOverflow | RuleName::ListenQueueOverflow => Kind::Counter,
            RuleName::TimeWaitSpike => Kind::Spike,
            RuleName::CloseWaitStuck => Kind::Stuck,
            RuleName::CloseWaitLeak => Kind::Leak,
            RuleName::SysctlMisconfig => Kind::Sysctl,
            RuleName::SysctlDrift => Kind::Drift,
            RuleName::AgentSilent => Kind::Silent,
        }
    }

    /// The keys a rule of this kind accepts.
    const fn keys(self) -> &'static [&'static str] {
        match self {
            Kind::Ratio | Kind::Count => &[
                "enabled",
                "warning",
                "critical",
                "fire_after",
                "resolve_after",
                "clear_ratio",
            ],
            Kind::Counter => &["enabled", "severity", "window", "resolve_after"],
            Kind::Spike => &[
                "enabled",
                "severity",
                "factor",
                "min",
                "baseline",
                "fire_after",
                "resolve_after",
                "clear_ratio",
            ],
            Kind::Stuck => &["enabled", "severity", "min_samples", "min_age"],
            Kind::Leak => &[
                "enabled",
                "severity",
                "samples",
                "min_growth",
                "resolve_after",
            ],
            Kind::Sysctl => &["enabled", "ignore"],
            Kind::Drift => &["enabled", "severity", "group_labels", "min_hosts", "ignore"],
            Kind::Silent => &["enabled", "severity", "intervals"],
        }
    }
}

/// Keys that shape a fleet-wide comparison and so cannot differ per host.
const FLEET_WIDE_KEYS: [&str; 2] = ["group_labels", "min_hosts"];

/// Reads every rule table under `prefix` (`alerts.rules`), with each rule's key path.
fn rule_patches(
    prefix: &str,
    tables: &BTreeMap<String, toml::Table>,
    is_override: bool,
) -> Result<Vec<(RuleName, RulePatch, String)>> {
    tables
        .iter()
        .map(|(name, table)| {
            let rule: RuleName = name.parse().map_err(|error| {
                let valid: Vec<&str> = RuleName::ALL.iter().map(|rule| rule.as_str()).collect();
                ConfigError(format!(
                    "{prefix}: {error}; the rules are {}",
                    valid.join(", ")
                ))
            })?;
            let path = format!("{prefix}.{name}");
            let patch = rule_patch(&path, rule, table, is_override)?;
            Ok((rule, patch, path))
        })
        .collect()
}

fn rule_patch(
    path: &str,
    rule: RuleName,
    table: &toml::Table,
    is_override: bool,
) -> Result<RulePatch> {
    let kind = Kind::of(rule);
    let mut patch = RulePatch::default();
    for (key, value) in table {
        let key_path = format!("{path}.{key}");
        if !kind.keys().contains(&key.as_str()) {
            return Err(ConfigError(format!(
                "{key_path} is not a setting of {rule}; its settings are {}",
                kind.keys().join(", ")
            )));
        }
        if is_override && FLEET_WIDE_KEYS.contains(&key.as_str()) {
            return Err(ConfigError(format!(
                "{key_path} applies to the whole fleet and cannot differ per host; set it in \
                 alerts.rules.{rule}"
            )));
        }
        let key_path = key_path.as_str();
        match key.as_str() {
            "enabled" => patch.enabled = Some(boolean(key_path, value)?),
            "warning" => patch.warning = Some(level(key_path, value, kind)?),
            "critical" => patch.critical = Some(level(key_path, value, kind)?),
            "fire_after" => patch.fire_after = Some(whole(key_path, value, 1, 1000)?),
            "resolve_after" => patch.resolve_after = Some(whole(key_path, value, 1, 1000)?),
            "clear_ratio" => patch.clear_ratio = Some(ratio(key_path, value)?),
            "severity" => patch.severity = Some(severity(key_path, value)?),
            "window" => patch.window = Some(duration_value(key_path, value, Duration::ZERO, HOUR)?),
            "factor" => patch.factor = Some(factor(key_path, value)?),
            "min" => patch.min = Some(whole(key_path, value, 0, 10_000_000)?),
            "baseline" => patch.baseline = Some(duration_value(key_path, value, MINUTE, DAY)?),
            "min_samples" => patch.min_samples = Some(whole(key_path, value, 1, 1000)?),
            "min_age" => {
                patch.min_age = Some(duration_value(key_path, value, Duration::ZERO, 7 * DAY)?);
            }
            "samples" => patch.samples = Some(whole(key_path, value, 2, 1000)?),
            "min_growth" => patch.min_growth = Some(whole(key_path, value, 1, 1_000_000)?),
            "ignore" => patch.ignore = Some(sysctl_names(key_path, value)?),
            "group_labels" => patch.group_labels = Some(label_names(key_path, value)?),
            "min_hosts" => patch.min_hosts = Some(whole(key_path, value, 2, 100_000)?),
            "intervals" => patch.intervals = Some(whole(key_path, value, 1, 1000)?),
            _ => {
                return Err(ConfigError(format!(
                    "{key_path} is not a setting of {rule}"
                )));
            }
        }
    }
    Ok(patch)
}

fn levels_of(rules: &Rules, rule: RuleName) -> Option<&Levels> {
    match rule {
        RuleName::TimeWaitBucketPressure => Some(&rules.time_wait_bucket_pressure),
        RuleName::EphemeralPortPressure => Some(&rules.ephemeral_port_pressure),
        RuleName::CloseWaitHigh => Some(&rules.close_wait_high),
        RuleName::OrphanPressure => Some(&rules.orphan_pressure),
        _ => None,
    }
}

/// Checks a level rule after `patch` (read from `path`) was applied: warning below critical, and a
/// level left unless the rule is off.
fn check_levels(path: &str, rule: RuleName, patch: &RulePatch, rules: &Rules) -> Result<()> {
    let Some(levels) = levels_of(rules, rule) else {
        return Ok(());
    };
    if let (Some(warning), Some(critical)) = (levels.warning, levels.critical)
        && warning >= critical
    {
        return Err(ConfigError(if matches!(patch.warning, Some(Some(_))) {
            format!("{path}.warning must be below critical ({critical}) (got {warning})")
        } else {
            format!("{path}.critical must be above warning ({warning}) (got {critical})")
        }));
    }
    if levels.enabled && levels.warning.is_none() && levels.critical.is_none() {
        return Err(ConfigError(format!(
            "{path} leaves {rule} with no level: set warning or critical, or enabled = false"
        )));
    }
    Ok(())
}

fn boolean(path: &str, value: &toml::Value) -> Result<bool> {
    value
        .as_bool()
        .ok_or_else(|| ConfigError(format!("{path} must be true or false (got {value})")))
}

fn number(path: &str, value: &toml::Value) -> Result<f64> {
    let number = match value {
        toml::Value::Float(number) => *number,
        // Exact for every value the ranges accept (far below 2^53).
        toml::Value::Integer(number) => *number as f64,
        _ => {
            return Err(ConfigError(format!(
                "{path} must be a number (got {value})"
            )));
        }
    };
    if number.is_finite() {
        Ok(number)
    } else {
        Err(ConfigError(format!(
            "{path} must be a finite number (got {number})"
        )))
    }
}

/// A warning or critical level: a number in the kind's range, or `"off"`.
fn level(path: &str, value: &toml::Value, kind: Kind) -> Result<Option<f64>> {
    if value.as_str() == Some("off") {
        return Ok(None);
    }
    if !matches!(value, toml::Value::Float(_) | toml::Value::Integer(_)) {
        return Err(ConfigError(format!(
            "{path} must be a number or \"off\" (got {value})"
        )));
    }
    let number = number(path, value)?;
    if kind == Kind::Count {
        if !(1.0..=MAX_COUNT_LEVEL).contains(&number) {
            return Err(ConfigError(format!(
                "{path} must be between 1 and 10000000 sockets (got {number})"
            )));
        }
        Ok(Some(number))
    } else {
        ratio(path, value).map(Some)
    }
}

/// A fraction in (0, 1].
fn ratio(path: &str, value: &toml::Value) -> Result<f64> {
    let number = number(path, value)?;
    if number > 0.0 && number <= 1.0 {
        Ok(number)
    } else {
        Err(ConfigError(format!(
            "{path} must be above 0 and at most 1 (got {number})"
        )))
    }
}

fn factor(path: &str, value: &toml::Value) -> Result<f64> {
    let number = number(path, value)?;
    if number > 1.0 && number <= 1000.0 {
        Ok(number)
    } else {
        Err(ConfigError(format!(
            "{path} must be above 1 and at most 1000 (got {number})"
        )))
    }
}

/// A whole number in `min..=max`, converted to the setting's type.
fn whole<T: TryFrom<i64>>(path: &str, value: &toml::Value, min: i64, max: i64) -> Result<T> {
    let out_of_range = || {
        ConfigError(format!(
            "{path} must be a whole number between {min} and {max} (got {value})"
        ))
    };
    let number = value.as_integer().ok_or_else(out_of_range)?;
    if !(min..=max).contains(&number) {
        return Err(out_of_range());
    }
    T::try_from(number).map_err(|_| out_of_range())
}

fn severity(path: &str, value: &toml::Value) -> Result<Severity> {
    let text = value.as_str().ok_or_else(|| {
        ConfigError(format!(
            "{path} must be info, warning or critical (got {value})"
        ))
    })?;
    text.parse()
        .map_err(|error| ConfigError(format!("{path}: {error}")))
}

fn duration_value(
    path: &str,
    value: &toml::Value,
    min: Duration,
    max: Duration,
) -> Result<Duration> {
    let text = value.as_str().ok_or_else(|| {
        ConfigError(format!(
            "{path} must be a duration in quotes, such as \"5m\" (got {value})"
        ))
    })?;
    duration(path, text, min, max)
}

/// A humantime duration (`30s`, `5m`, `1h 30m`) in `min..=max`.
fn duration(path: &str, text: &str, min: Duration, max: Duration) -> Result<Duration> {
    let parsed = humantime::parse_duration(text)
        .map_err(|error| ConfigError(format!("{path}: {text:?} is not a duration: {error}")))?;
    if (min..=max).contains(&parsed) {
        Ok(parsed)
    } else {
        Err(ConfigError(format!(
            "{path} must be between {} and {} (got {text:?})",
            humantime::format_duration(min),
            humantime::format_duration(max),
        )))
    }
}

fn optional_duration(
    path: &str,
    text: Option<&str>,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration> {
    text.map_or(Ok(default), |text| duration(path, text, min, max))
}

fn strings<'a>(path: &str, value: &'a toml::Value) -> Result<Vec<&'a str>> {
    let not_strings = || ConfigError(format!("{path} must be a list of strings (got {value})"));
    value
        .as_array()
        .ok_or_else(not_strings)?
        .iter()
        .map(|item| item.as_str().ok_or_else(not_strings))
        .collect()
}

/// `ignore`: sysctl names such as `net.ipv4.tcp_fin_timeout`.
fn sysctl_names(path: &str, value: &toml::Value) -> Result<BTreeSet<String>> {
    strings(path, value)?
        .into_iter()
        .enumerate()
        .map(|(index, name)| {
            let looks_right = name.starts_with("net.")
                && name.len() <= MAX_SYSCTL_NAME
                && name.chars().all(|c| c.is_ascii_graphic() && c != '/')
                && name.split('.').all(|part| !part.is_empty());
            if looks_right {
                Ok(name.to_owned())
            } else {
                Err(ConfigError(format!(
                    "{path}[{index}] must be a sysctl name such as \"net.ipv4.tcp_fin_timeout\" \
                     (net.*, at most {MAX_SYSCTL_NAME} characters) (got {name:?})"
                )))
            }
        })
        .collect()
}

/// Label names: non-empty, at most 64 characters.
fn label_names(path: &str, value: &toml::Value) -> Result<Vec<String>> {
    let names: Vec<&str> = strings(path, value)?;
    label_list(path, &names)
}

fn label_list<S: AsRef<str>>(path: &str, names: &[S]) -> Result<Vec<String>> {
    names
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let name = name.as_ref();
            if name.is_empty() || name.chars().count() > MAX_LABEL_NAME {
                Err(ConfigError(format!(
                    "{path}[{index}] must be a label name of 1 to {MAX_LABEL_NAME} characters \
                     (got {name:?})"
                )))
            } else {
                Ok(name.to_owned())
            }
        })
        .collect()
}

/// Parses matchers, naming the first bad one by its index.
fn matchers(texts: &[String], path: &str) -> Result<Matchers> {
    for (index, text) in texts.iter().enumerate() {
        Matchers::parse(std::slice::from_ref(text))
            .map_err(|error| ConfigError(format!("{path}[{index}]: {error}")))?;
    }
    Matchers::parse(texts).map_err(|error| ConfigError(format!("{path}: {error}")))
}

/// An http(s) URL given for people; returned without a trailing `/`.
fn external_url(raw: &str, path: &str) -> Result<String> {
    let url = reqwest::Url::parse(raw)
        .map_err(|error| ConfigError(format!("{path}: {raw:?} is not a URL: {error}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError(format!(
            "{path} must be an http or https URL (got {raw:?})"
        )));
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

fn webhook_targets(files: Vec<WebhookFile>, base_dir: Option<&Path>) -> Result<Vec<WebhookTarget>> {
    if files.len() > MAX_WEBHOOKS {
        return Err(ConfigError(format!(
            "webhooks: at most {MAX_WEBHOOKS} webhooks are allowed (got {})",
            files.len()
        )));
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut targets = Vec::with_capacity(files.len());
    for (index, file) in files.into_iter().enumerate() {
        let target = webhook_target(index, file, base_dir)?;
        if let Some(first) = seen.insert(target.name.clone(), index) {
            return Err(ConfigError(format!(
                "webhooks[{index}].name {:?} is already used by webhooks[{first}]",
                target.name
            )));
        }
        targets.push(target);
    }
    Ok(targets)
}

fn webhook_target(
    index: usize,
    file: WebhookFile,
    base_dir: Option<&Path>,
) -> Result<WebhookTarget> {
    let prefix = format!("webhooks[{index}]");
    let name = file
        .name
        .ok_or_else(|| ConfigError(format!("{prefix}.name is required")))?;
    let name_ok = !name.is_empty()
        && name.len() <= MAX_WEBHOOK_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !name_ok {
        return Err(ConfigError(format!(
            "{prefix}.name must be 1 to {MAX_WEBHOOK_NAME} characters of A-Z, a-z, 0-9, _, . and - \
             (got {name:?})"
        )));
    }
    let url = webhook_url(&prefix, file.url)?;
    let format = match file.format.as_deref() {
        None => WebhookFormat::default(),
        Some(raw) => [
            WebhookFormat::Alertmanager,
            WebhookFormat::Slack,
            WebhookFormat::Json,
        ]
        .into_iter()
        .find(|format| format.as_str() == raw)
        .ok_or_else(|| {
            ConfigError(format!(
                "{prefix}.format must be alertmanager, slack or json (got {raw:?})"
            ))
        })?,
    };
    let secret = match (file.secret, file.secret_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError(format!(
                "{prefix}: set secret or secret_file, not both"
            )));
        }
        (Some(Redacted(text)), None) => Some(signing_secret(&format!("{prefix}.secret"), &text)?),
        (None, Some(file)) => Some(secret_from_file(&prefix, &file, base_dir)?),
        (None, None) => None,
    };
    let matchers = matchers(&file.matchers, &format!("{prefix}.match"))?;
    let defaults = Grouping::default();
    let group_by = match &file.group_by {
        Some(names) => label_list(&format!("{prefix}.group_by"), names)?,
        None => defaults.group_by,
    };
    let group_wait = optional_duration(
        &format!("{prefix}.group_wait"),
        file.group_wait.as_deref(),
        defaults.group_wait,
        Duration::ZERO,
        HOUR,
    )?;
    let group_interval = optional_duration(
        &format!("{prefix}.group_interval"),
        file.group_interval.as_deref(),
        defaults.group_interval,
        SECOND,
        DAY,
    )?;
    let repeat_path = format!("{prefix}.repeat_interval");
    let repeat_interval = optional_duration(
        &repeat_path,
        file.repeat_interval.as_deref(),
        defaults.repeat_interval,
        MINUTE,
        7 * DAY,
    )?;
    if repeat_interval < group_interval {
        return Err(ConfigError(format!(
            "{repeat_path} must be at least group_interval ({}) (got {})",
            humantime::format_duration(group_interval),
            humantime::format_duration(repeat_interval)
        )));
    }
    Ok(WebhookTarget {
        name,
        url,
        format,
        secret,
        matchers,
        send_resolved: file.send_resolved.unwrap_or(true),
        grouping: Grouping {
            group_by,
            group_wait,
            group_interval,
            repeat_interval,
        },
    })
}

/// The receiver's URL. It is never shown: a Slack webhook URL is itself a secret.
fn webhook_url(prefix: &str, url: Option<Redacted>) -> Result<reqwest::Url> {
    let Redacted(raw) = url.ok_or_else(|| ConfigError(format!("{prefix}.url is required")))?;
    let url = reqwest::Url::parse(&raw)
        .map_err(|error| ConfigError(format!("{prefix}.url is not a valid URL: {error}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError(format!(
            "{prefix}.url must be an http or https URL (got scheme {:?})",
            url.scheme()
        )));
    }
    Ok(url)
}

fn signing_secret(path: &str, text: &str) -> Result<SigningSecret> {
    text.parse::<SigningSecret>()
        .map_err(|error| ConfigError(format!("{path}: {error}")))
}

/// Reads `secret_file` (relative to `base_dir`), without its trailing newline.
fn secret_from_file(prefix: &str, file: &Path, base_dir: Option<&Path>) -> Result<SigningSecret> {
    let path = match base_dir {
        Some(dir) if file.is_relative() => dir.join(file),
        _ => file.to_owned(),
    };
    let key = format!("{prefix}.secret_file");
    let text = std::fs::read_to_string(&path)
        .map_err(|error| ConfigError(format!("{key}: cannot read {}: {error}", path.display())))?;
    signing_secret(&key, text.trim_end_matches(['\n', '\r']))
}

fn delivery_settings(file: &DeliveryFile) -> Result<DeliverySettings> {
    let defaults = DeliverySettings::default();
    let timeout = optional_duration(
        "delivery.timeout",
        file.timeout.as_deref(),
        defaults.timeout,
        100 * MILLISECOND,
        5 * MINUTE,
    )?;
    let retry_initial = optional_duration(
        "delivery.retry_initial",
        file.retry_initial.as_deref(),
        defaults.retry_initial,
        10 * MILLISECOND,
        HOUR,
    )?;
    let retry_max = optional_duration(
        "delivery.retry_max",
        file.retry_max.as_deref(),
        defaults.retry_max,
        Duration::ZERO,
        DAY,
    )?;
    if retry_max < retry_initial {
        return Err(ConfigError(format!(
            "delivery.retry_max must be at least retry_initial ({}) (got {})",
            humantime::format_duration(retry_initial),
            humantime::format_duration(retry_max)
        )));
    }
    let give_up_after = optional_duration(
        "delivery.give_up_after",
        file.give_up_after.as_deref(),
        defaults.give_up_after,
        MINUTE,
        30 * DAY,
    )?;
    Ok(DeliverySettings {
        timeout,
        retry_initial,
        retry_max,
        give_up_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How the server's file embeds the three sections.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        alerts: AlertsFile,
        #[serde(default)]
        webhooks: Vec<WebhookFile>,
        #[serde(default)]
        delivery: DeliveryFile,
    }

    fn parse(text: &str) -> File {
        toml::from_str(text).unwrap()
    }

    fn load_in(text: &str, base_dir: Option<&Path>) -> Result<AlertingConfig> {
        let file = parse(text);
        AlertingConfig::from_files(file.alerts, file.webhooks, file.delivery, base_dir)
    }

    fn load(text: &str) -> Result<AlertingConfig> {
        load_in(text, None)
    }

    fn error(text: &str) -> String {
        load(text).unwrap_err().to_string()
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    fn temp_dir() -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let number = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "sockfleet-alerts-config-{}-{number}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const SECRET: &str = "whsec_c2VjcmV0LXRoYXQtbXVzdC1uZXZlci1sZWFr";

    #[test]
    fn no_sections_give_the_defaults() {
        let config = load("").unwrap();
        assert!(config.enabled);
        assert_eq!(config.external_url, None);
        assert_eq!(config.rules.base(), &Rules::default());
        assert_eq!(
            config.rules.for_host(&labels(&[("role", "lb")])),
            Rules::default()
        );
        assert!(config.webhooks.is_empty());
        assert_eq!(config.delivery, DeliverySettings::default());

        let default = AlertingConfig::default();
        assert!(default.enabled && default.webhooks.is_empty() && default.external_url.is_none());
        assert_eq!(default.rules.base(), &Rules::default());
        assert_eq!(default.delivery, DeliverySettings::default());
    }

    const FULL: &str = r#"
        [alerts]
        enabled = true
        external_url = "http://sockfleet.example:7070/"

        [alerts.rules.TimeWaitBucketPressure]
        enabled = true
        warning = 0.6
        critical = 0.9
        fire_after = 3
        resolve_after = 4
        clear_ratio = 0.85

        [alerts.rules.EphemeralPortPressure]
        warning = "off"

        [alerts.rules.CloseWaitHigh]
        warning = 200
        critical = 2000.0

        [alerts.rules.OrphanPressure]
        enabled = false
        warning = "off"
        critical = "off"

        [alerts.rules.TimeWaitOverflow]
        severity = "warning"
        window = "0s"

        [alerts.rules.ListenQueueOverflow]
        window = "2m"
        resolve_after = 10

        [alerts.rules.TimeWaitSpike]
        severity = "warning"
        factor = 4.5
        min = 10000
        baseline = "2h"

        [alerts.rules.CloseWaitStuck]
        min_samples = 5
        min_age = "10m"

        [alerts.rules.CloseWaitLeak]
        samples = 20
        min_growth = 50

        [alerts.rules.SysctlMisconfig]
        ignore = ["net.ipv4.tcp_fin_timeout"]

        [alerts.rules.SysctlDrift]
        severity = "warning"
        group_labels = ["role"]
        min_hosts = 4
        ignore = ["net.ipv4.tcp_tw_reuse", "net.core.somaxconn"]

        [alerts.rules.AgentSilent]
        severity = "critical"
        intervals = 5

        [[alerts.overrides]]
        match = ["role=lb", "env=~prod|staging"]
        [alerts.overrides.rules.TimeWaitBucketPressure]
        warning = 0.7

        [delivery]
        timeout = "5s"
        retry_initial = "500ms"
        retry_max = "10m"
        give_up_after = "2d"

        [[webhooks]]
        name = "ops"
        url = "https://hooks.example/x"
        format = "slack"
        secret = "whsec_c2VjcmV0LXRoYXQtbXVzdC1uZXZlci1sZWFr"
        match = ["severity=~warning|critical"]
        send_resolved = false
        group_by = ["alertname"]
        group_wait = "10s"
        group_interval = "1m"
        repeat_interval = "12h"

        [[webhooks]]
        name = "audit.log-2"
        url = "http://127.0.0.1:9000/hook"
    "#;

    #[test]
    fn a_full_file_parses() {
        let config = load(FULL).unwrap();
        assert!(config.enabled);
        assert_eq!(
            config.external_url.as_deref(),
            Some("http://sockfleet.example:7070")
        );

        let rules = config.rules.base();
        let defaults = Rules::default();
        let tw = &rules.time_wait_bucket_pressure;
        assert_eq!((tw.warning, tw.critical), (Some(0.6), Some(0.9)));
        assert_eq!(
            (
                tw.hysteresis.fire_after,
                tw.hysteresis.resolve_after,
                tw.hysteresis.clear_ratio
            ),
            (3, 4, 0.85)
        );
        assert_eq!(rules.ephemeral_port_pressure.warning, None);
        assert_eq!(rules.ephemeral_port_pressure.critical, Some(0.8));
        assert_eq!(rules.close_wait_high.warning, Some(200.0));
        assert_eq!(rules.close_wait_high.critical, Some(2000.0));
        assert!(!rules.orphan_pressure.enabled);
        assert_eq!(rules.time_wait_overflow.severity, Severity::Warning);
        assert_eq!(rules.time_wait_overflow.window, Duration::ZERO);
        assert_eq!(rules.listen_queue_overflow.window, 2 * MINUTE);
        assert_eq!(rules.listen_queue_overflow.resolve_after, 10);
        let spike = &rules.time_wait_spike;
        assert_eq!(
            (spike.factor, spike.min, spike.baseline),
            (4.5, 10_000, 2 * HOUR)
        );
        assert_eq!(spike.hysteresis, defaults.time_wait_spike.hysteresis);
        assert_eq!(rules.close_wait_stuck.min_samples, 5);
        assert_eq!(rules.close_wait_stuck.min_age, 10 * MINUTE);
        assert_eq!(rules.close_wait_leak.samples, 20);
        assert_eq!(rules.close_wait_leak.min_growth, 50);
        assert!(
            rules
                .sysctl_misconfig
                .ignore
                .contains("net.ipv4.tcp_fin_timeout")
        );
        assert_eq!(rules.sysctl_drift.group_labels, ["role"]);
        assert_eq!(rules.sysctl_drift.min_hosts, 4);
        assert_eq!(rules.sysctl_drift.ignore.len(), 2);
        assert_eq!(rules.agent_silent.severity, Severity::Critical);
        assert_eq!(rules.agent_silent.intervals, 5);

        assert_eq!(
            config.delivery,
            DeliverySettings {
                timeout: 5 * SECOND,
                retry_initial: 500 * MILLISECOND,
                retry_max: 10 * MINUTE,
                give_up_after: 2 * DAY,
            }
        );

        let [ops, audit] = &config.webhooks[..] else {
            panic!("two webhooks expected: {:?}", config.webhooks);
        };
        assert_eq!(ops.name, "ops");
        assert_eq!(ops.url.as_str(), "https://hooks.example/x");
        assert_eq!(ops.format, WebhookFormat::Slack);
        assert!(ops.secret.is_some());
        assert!(!ops.send_resolved);
        assert!(ops.matchers.matches(&labels(&[("severity", "critical")])));
        assert!(!ops.matchers.matches(&labels(&[("severity", "info")])));
        assert_eq!(
            ops.grouping,
            Grouping {
                group_by: vec!["alertname".to_owned()],
                group_wait: 10 * SECOND,
                group_interval: MINUTE,
                repeat_interval: 12 * HOUR,
            }
        );
        assert_eq!(audit.format, WebhookFormat::Alertmanager);
        assert!(audit.secret.is_none() && audit.send_resolved);
        assert!(audit.matchers.matches(&labels(&[("severity", "info")])));
        assert_eq!(audit.grouping, Grouping::default());
    }

    #[test]
    fn each_bad_value_is_refused_naming_its_key_and_value() {
        let cases: &[(&str, &[&str])] = &[
            (
                "[alerts.rules.TimeWaitBucketPressure]\nwarning = 1.5",
                &["alerts.rules.TimeWaitBucketPressure.warning", "1.5"],
            ),
            (
                "[alerts.rules.OrphanPressure]\ncritical = 0",
                &["alerts.rules.OrphanPressure.critical", "(got 0)"],
            ),
            (
                "[alerts.rules.EphemeralPortPressure]\nwarning = nan",
                &["alerts.rules.EphemeralPortPressure.warning", "NaN"],
            ),
            (
                "[alerts.rules.CloseWaitHigh]\ncritical = 20000000",
                &["alerts.rules.CloseWaitHigh.critical", "20000000"],
            ),
            (
                "[alerts.rules.CloseWaitHigh]\nwarning = \"high\"",
                &["alerts.rules.CloseWaitHigh.warning", "\"high\"", "\"off\""],
            ),
            (
                "[alerts.rules.TimeWaitBucketPressure]\nwarning = 0.9",
                &[
                    "alerts.rules.TimeWaitBucketPressure.warning",
                    "critical (0.8)",
                    "0.9",
                ],
            ),
            (
                "[alerts.rules.CloseWaitHigh]\ncritical = 50",
                &["alerts.rules.CloseWaitHigh.critical", "warning (100)", "50"],
            ),
            (
                "[alerts.rules.CloseWaitHigh]\nwarning = \"off\"\ncritical = \"off\"",
                &["alerts.rules.CloseWaitHigh", "no level", "enabled = false"],
            ),
            (
                "[alerts.rules.TimeWaitBucketPressure]\nfire_after = 0",
                &["alerts.rules.TimeWaitBucketPressure.fire_after", "(got 0)"],
            ),
            (
                "[alerts.rules.TimeWaitSpike]\nresolve_after = 1001",
                &["alerts.rules.TimeWaitSpike.resolve_after", "1001"],
            ),
            (
                "[alerts.rules.TimeWaitSpike]\nclear_ratio = 1.2",
                &["alerts.rules.TimeWaitSpike.clear_ratio", "1.2"],
            ),
            (
                "[alerts.rules.TimeWaitSpike]\nfactor = 1",
                &["alerts.rules.TimeWaitSpike.factor", "(got 1)"],
            ),
            (
                "[alerts.rules.TimeWaitSpike]\nmin = -1",
                &["alerts.rules.TimeWaitSpike.min", "-1"],
            ),
            (
                "[alerts.rules.TimeWaitSpike]\nmin = 5.5",
                &["alerts.rules.TimeWaitSpike.min", "whole number", "5.5"],
            ),
            (
                "[alerts.rules.TimeWaitSpike]\nbaseline = \"30s\"",
                &["alerts.rules.TimeWaitSpike.baseline", "30s"],
            ),
            (
                "[alerts.rules.TimeWaitOverflow]\nwindow = \"2h\"",
                &["alerts.rules.TimeWaitOverflow.window", "2h"],
            ),
            (
                "[alerts.rules.ListenQueueOverflow]\nwindow = \"soon\"",
                &[
                    "alerts.rules.ListenQueueOverflow.window",
                    "\"soon\"",
                    "not a duration",
                ],
            ),
            (
                "[alerts.rules.ListenQueueOverflow]\nwindow = 60",
                &["alerts.rules.ListenQueueOverflow.window", "(got 60)"],
            ),
            (
                "[alerts.rules.CloseWaitStuck]\nmin_samples = 0",
                &["alerts.rules.CloseWaitStuck.min_samples", "(got 0)"],
            ),
            (
                "[alerts.rules.CloseWaitStuck]\nmin_age = \"8d\"",
                &["alerts.rules.CloseWaitStuck.min_age", "\"8d\""],
            ),
            (
                "[alerts.rules.CloseWaitLeak]\nsamples = 1",
                &["alerts.rules.CloseWaitLeak.samples", "(got 1)"],
            ),
            (
                "[alerts.rules.CloseWaitLeak]\nmin_growth = 0",
                &["alerts.rules.CloseWaitLeak.min_growth", "(got 0)"],
            ),
            (
                "[alerts.rules.CloseWaitLeak]\nseverity = \"urgent\"",
                &["alerts.rules.CloseWaitLeak.severity", "\"urgent\""],
            ),
            (
                "[alerts.rules.AgentSilent]\nintervals = 1001",
                &["alerts.rules.AgentSilent.intervals", "1001"],
            ),
            (
                "[alerts.rules.AgentSilent]\nenabled = \"yes\"",
                &["alerts.rules.AgentSilent.enabled", "\"yes\""],
            ),
            (
                "[alerts.rules.SysctlDrift]\nmin_hosts = 1",
                &["alerts.rules.SysctlDrift.min_hosts", "(got 1)"],
            ),
            (
                "[alerts.rules.SysctlDrift]\ngroup_labels = [\"role\", \"\"]",
                &["alerts.rules.SysctlDrift.group_labels[1]", "\"\""],
            ),
            (
                "[alerts.rules.SysctlDrift]\ngroup_labels = \"role\"",
                &["alerts.rules.SysctlDrift.group_labels", "list of strings"],
            ),
            (
                "[alerts.rules.SysctlMisconfig]\nignore = [\"kernel.pid_max\"]",
                &[
                    "alerts.rules.SysctlMisconfig.ignore[0]",
                    "\"kernel.pid_max\"",
                ],
            ),
            (
                "[alerts.rules.SysctlDrift]\nignore = [\"net.ipv4..x\"]",
                &["alerts.rules.SysctlDrift.ignore[0]", "\"net.ipv4..x\""],
            ),
            (
                "[alerts]\nexternal_url = \"ftp://files.example\"",
                &["alerts.external_url", "ftp://files.example"],
            ),
            (
                "[[alerts.overrides]]\n[alerts.overrides.rules.AgentSilent]\nintervals = 5",
                &["alerts.overrides[0].match", "at least one"],
            ),
            (
                "[[alerts.overrides]]\nmatch = [\"role=lb\", \"role\"]",
                &["alerts.overrides[0].match[1]", "\"role\""],
            ),
            (
                "[[alerts.overrides]]\nmatch = [\"role=lb\"]\n\
                 [alerts.overrides.rules.CloseWaitHigh]\nwarning = 0",
                &["alerts.overrides[0].rules.CloseWaitHigh.warning", "(got 0)"],
            ),
            (
                "[delivery]\ntimeout = \"10ms\"",
                &["delivery.timeout", "10ms", "100ms", "5m"],
            ),
            (
                "[delivery]\nretry_initial = \"2h\"",
                &["delivery.retry_initial", "2h"],
            ),
            (
                "[delivery]\nretry_initial = \"1m\"\nretry_max = \"30s\"",
                &["delivery.retry_max", "retry_initial (1m)", "30s"],
            ),
            (
                "[delivery]\nretry_max = \"25h\"",
                &["delivery.retry_max", "\"25h\""],
            ),
            (
                "[delivery]\ngive_up_after = \"31d\"",
                &["delivery.give_up_after", "\"31d\""],
            ),
            (
                "[delivery]\ngive_up_after = \"a while\"",
                &["delivery.give_up_after", "\"a while\""],
            ),
            (
                "[[webhooks]]\nurl = \"https://h.example/\"",
                &["webhooks[0].name", "required"],
            ),
            (
                "[[webhooks]]\nname = \"ops\"",
                &["webhooks[0].url", "required"],
            ),
            (
                "[[webhooks]]\nname = \"ops hook\"\nurl = \"https://h.example/\"",
                &["webhooks[0].name", "\"ops hook\""],
            ),
            (
                "[[webhooks]]\nname = \"ops\"\nurl = \"ftp://h.example/\"",
                &["webhooks[0].url", "\"ftp\""],
            ),
            (
                "[[webhooks]]\nname = \"ops\"\nurl = \"not a url\"",
                &["webhooks[0].url", "not a valid URL"],
            ),
            (
                "[[webhooks]]\nname = \"ops\"\nurl = \"https://h.example/\"\nformat = \"xml\"",
                &[
                    "webhooks[0].format",
                    "\"xml\"",
                    "alertmanager, slack or json",
                ],
            ),
            (
                "[[webhooks]]\nname = \"ops\"\nurl = \"https://h.example/\"\nmatch = [\"sev=~(\"]",
                &["webhooks[0].match[0]", "sev=~("],
            ),
            (
                "[[webhooks]]\nname = \"ops\"\nurl = \"https://h.example/\"\ngroup_by = [\"\"]",
                &["webhooks[0].group_by[0]", "\"\""],
            ),
            (
                "[[webhooks]]\nname = \"ops\"\nurl = \"https://h.example/\"\ngroup_wait = \"2h\"",
                &["webhooks[0].group_wait", "2h"],
            ),
            (
                "[[webhooks]]\nname = \"ops\"\nurl = \"https://h.example/\"\n\
                 group_interval = \"500ms\"",
                &["webhooks[0].group_interval", "500ms"],
            ),
            (
                "[[webhooks]]\nname = \"ops\"\nurl = \"https://h.example/\"\n\
                 repeat_interval = \"8d\"",
                &["webhooks[0].repeat_interval", "\"8d\""],
            ),
            (
                "[[webhooks]]\nname = \"ops\"\nurl = \"https://h.example/\"\n\
                 group_interval = \"2h\"\nrepeat_interval = \"1h\"",
                &["webhooks[0].repeat_interval", "group_interval (2h)", "1h"],
            ),
            (
                "[[webhooks]]\nname = \"ops\"\nurl = \"https://h.example/\"\nsecret = \"\"",
                &["webhooks[0].secret", "empty"],
            ),
        ];
        for (text, expected) in cases {
            let message = error(text);
            for part in *expected {
                assert!(
                    message.contains(part),
                    "{text:?} gave {message:?}, lacking {part:?}"
                );
            }
        }
    }

    #[test]
    fn a_level_rule_may_be_switched_off_entirely() {
        let config = load(
            "[alerts.rules.CloseWaitHigh]\nenabled = false\nwarning = \"off\"\ncritical = \"off\"",
        )
        .unwrap();
        let rule = &config.rules.base().close_wait_high;
        assert!(!rule.enabled && rule.warning.is_none() && rule.critical.is_none());
    }

    #[test]
    fn too_many_overrides_or_webhooks_are_refused() {
        let overrides = "[[alerts.overrides]]\nmatch = [\"role=lb\"]\n".repeat(MAX_OVERRIDES + 1);
        let message = error(&overrides);
        assert!(
            message.contains("alerts.overrides") && message.contains("65"),
            "{message}"
        );
        assert!(load(&"[[alerts.overrides]]\nmatch = [\"a=b\"]\n".repeat(MAX_OVERRIDES)).is_ok());

        let webhooks: String = (0..=MAX_WEBHOOKS)
            .map(|n| format!("[[webhooks]]\nname = \"h{n}\"\nurl = \"https://h.example/{n}\"\n"))
            .collect();
        let message = error(&webhooks);
        assert!(
            message.starts_with("webhooks:") && message.contains("33"),
            "{message}"
        );
    }

    #[test]
    fn an_unknown_rule_is_named_with_the_valid_ones() {
        let message = error("[alerts.rules.TimeWaitPressure]\nwarning = 0.5");
        assert!(message.contains("alerts.rules"), "{message}");
        assert!(message.contains("\"TimeWaitPressure\""), "{message}");
        for rule in RuleName::ALL {
            assert!(message.contains(rule.as_str()), "{message}");
        }

        let message =
            error("[[alerts.overrides]]\nmatch = [\"a=b\"]\n[alerts.overrides.rules.Nope]");
        assert!(message.contains("alerts.overrides[0].rules") && message.contains("\"Nope\""));
    }

    #[test]
    fn a_key_of_another_kind_of_rule_is_refused() {
        let message = error("[alerts.rules.CloseWaitHigh]\nfactor = 3.0");
        assert!(
            message.contains("alerts.rules.CloseWaitHigh.factor"),
            "{message}"
        );
        assert!(message.contains("warning, critical"), "{message}");

        for (rule, key) in [
            ("TimeWaitOverflow", "warning = 0.5"),
            ("TimeWaitSpike", "window = \"1m\""),
            ("CloseWaitStuck", "samples = 3"),
            ("SysctlMisconfig", "severity = \"info\""),
            ("AgentSilent", "typo = 1"),
        ] {
            let message = error(&format!("[alerts.rules.{rule}]\n{key}"));
            let name = key.split(' ').next().unwrap();
            assert!(
                message.contains(&format!("alerts.rules.{rule}.{name}")),
                "{message}"
            );
        }

        let message = error(
            "[[alerts.overrides]]\nmatch = [\"role=lb\"]\n\
             [alerts.overrides.rules.SysctlDrift]\ngroup_labels = [\"role\"]",
        );
        assert!(
            message.contains("alerts.overrides[0].rules.SysctlDrift.group_labels"),
            "{message}"
        );
    }

    #[test]
    fn unknown_section_keys_are_refused_by_serde() {
        for text in [
            "[alerts]\nenable = true",
            "[delivery]\ntimeout_s = 5",
            "[[webhooks]]\nname = \"a\"\nurl = \"https://h/\"\nsecrets = \"x\"",
            "[[alerts.overrides]]\nmatches = [\"a=b\"]",
        ] {
            assert!(toml::from_str::<File>(text).is_err(), "{text}");
        }
    }

    #[test]
    fn overrides_apply_to_matching_hosts_and_later_ones_win() {
        let config = load(
            r#"
            [alerts.rules.TimeWaitBucketPressure]
            critical = 0.9

            [[alerts.overrides]]
            match = ["role=lb", "env=~prod|staging"]
            [alerts.overrides.rules.TimeWaitBucketPressure]
            warning = 0.7
            fire_after = 5
            [alerts.overrides.rules.AgentSilent]
            intervals = 10

            [[alerts.overrides]]
            match = ["env=prod"]
            [alerts.overrides.rules.TimeWaitBucketPressure]
            warning = 0.6
            "#,
        )
        .unwrap();
        let book = &config.rules;

        let plain = book.for_host(&labels(&[("role", "db"), ("env", "prod")]));
        let tw = &plain.time_wait_bucket_pressure;
        assert_eq!((tw.warning, tw.critical), (Some(0.6), Some(0.9)));
        assert_eq!(tw.hysteresis.fire_after, 2);
        assert_eq!(plain.agent_silent.intervals, 3);

        let staging_lb = book.for_host(&labels(&[("role", "lb"), ("env", "staging")]));
        let tw = &staging_lb.time_wait_bucket_pressure;
        assert_eq!(
            (tw.warning, tw.critical, tw.hysteresis.fire_after),
            (Some(0.7), Some(0.9), 5)
        );
        assert_eq!(staging_lb.agent_silent.intervals, 10);

        let prod_lb = book.for_host(&labels(&[("role", "lb"), ("env", "prod")]));
        let tw = &prod_lb.time_wait_bucket_pressure;
        assert_eq!(
            (tw.warning, tw.critical, tw.hysteresis.fire_after),
            (Some(0.6), Some(0.9), 5)
        );

        let other = book.for_host(&labels(&[("role", "lb"), ("env", "dev")]));
        assert_eq!(&other, book.base());
        assert_eq!(book.base().time_wait_bucket_pressure.critical, Some(0.9));
    }

    #[test]
    fn overrides_are_checked_against_the_base() {
        let message = error(
            r#"
            [alerts.rules.TimeWaitBucketPressure]
            critical = 0.6
            [[alerts.overrides]]
            match = ["role=lb"]
            [alerts.overrides.rules.TimeWaitBucketPressure]
            warning = 0.7
            "#,
        );
        assert!(
            message.contains("alerts.overrides[0].rules.TimeWaitBucketPressure.warning"),
            "{message}"
        );
        assert!(
            message.contains("critical (0.6)") && message.contains("0.7"),
            "{message}"
        );

        let message = error(
            "[[alerts.overrides]]\nmatch = [\"a=b\"]\n[[alerts.overrides]]\nmatch = [\"a=c\"]\n\
             [alerts.overrides.rules.OrphanPressure]\nwarning = \"off\"\ncritical = \"off\"",
        );
        assert!(
            message.contains("alerts.overrides[1].rules.OrphanPressure"),
            "{message}"
        );
    }

    #[test]
    fn overrides_that_conflict_on_one_host_leave_consistent_levels() {
        // Each override is valid on the base; together they would put warning above critical.
        let config = load(
            r#"
            [[alerts.overrides]]
            match = ["role=lb"]
            [alerts.overrides.rules.TimeWaitBucketPressure]
            warning = 0.7
            [[alerts.overrides]]
            match = ["env=prod"]
            [alerts.overrides.rules.TimeWaitBucketPressure]
            critical = 0.6
            "#,
        )
        .unwrap();
        let both = config
            .rules
            .for_host(&labels(&[("role", "lb"), ("env", "prod")]));
        let tw = &both.time_wait_bucket_pressure;
        assert_eq!(
            (tw.warning, tw.critical),
            (Some(0.5), Some(0.6)),
            "the later override wins"
        );

        let lb = config.rules.for_host(&labels(&[("role", "lb")]));
        let tw = &lb.time_wait_bucket_pressure;
        assert_eq!((tw.warning, tw.critical), (Some(0.7), Some(0.8)));
    }

    #[test]
    fn secret_file_is_read_relative_to_the_base_dir_without_its_newline() {
        let dir = temp_dir();
        std::fs::write(dir.join("hook.secret"), format!("{SECRET}\n")).unwrap();
        let text = "[[webhooks]]\nname = \"ops\"\nurl = \"https://h.example/\"\n\
                    secret_file = \"hook.secret\"";
        let config = load_in(text, Some(&dir)).unwrap();
        let from_file = config.webhooks[0].secret.as_ref().unwrap();
        let expected: SigningSecret = SECRET.parse().unwrap();
        assert_eq!(
            crate::webhook::signature(from_file, "id", 1, b"{}"),
            crate::webhook::signature(&expected, "id", 1, b"{}")
        );

        let absolute = format!(
            "[[webhooks]]\nname = \"ops\"\nurl = \"https://h.example/\"\nsecret_file = {:?}",
            dir.join("hook.secret").display().to_string()
        );
        assert!(load(&absolute).unwrap().webhooks[0].secret.is_some());

        let message = load_in(&text.replace("hook.secret", "missing.secret"), Some(&dir))
            .unwrap_err()
            .to_string();
        assert!(message.contains("webhooks[0].secret_file"), "{message}");
        assert!(message.contains("missing.secret"), "{message}");

        std::fs::write(dir.join("empty.secret"), "\n").unwrap();
        let message = load_in(&text.replace("hook.secret", "empty.secret"), Some(&dir))
            .unwrap_err()
            .to_string();
        assert!(message.contains("webhooks[0].secret_file") && message.contains("empty"));

        let message = load_in(&format!("{text}\nsecret = \"{SECRET}\""), Some(&dir))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("webhooks[0]") && message.contains("not both"),
            "{message}"
        );
        assert!(!message.contains(SECRET));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn webhook_names_must_be_unique() {
        let message = error(
            "[[webhooks]]\nname = \"ops\"\nurl = \"https://a.example/\"\n\
             [[webhooks]]\nname = \"dev\"\nurl = \"https://b.example/\"\n\
             [[webhooks]]\nname = \"ops\"\nurl = \"https://c.example/\"\n",
        );
        assert!(message.contains("webhooks[2].name"), "{message}");
        assert!(
            message.contains("\"ops\"") && message.contains("webhooks[0]"),
            "{message}"
        );
    }

    #[test]
    fn secrets_never_show_in_errors_or_debug_output() {
        let slack_url = "https://hooks.slack.example/services/T0/B0/tokenthatmustnotleak";
        let good =
            format!("[[webhooks]]\nname = \"ops\"\nurl = \"{slack_url}\"\nsecret = \"{SECRET}\"\n");
        let file = parse(&good);
        let debug = format!("{file:?}");
        assert!(
            !debug.contains(SECRET) && !debug.contains("tokenthatmustnotleak"),
            "{debug}"
        );
        let config = load(&good).unwrap();
        let debug = format!("{config:?}");
        assert!(
            !debug.contains(SECRET) && !debug.contains("c2VjcmV0"),
            "{debug}"
        );

        let bad_secret = "whsec_***secretthatmustnotleak***";
        for text in [
            good.replace("ops", "o p s"),
            good.replace("https://", "ftp://"),
            format!("{good}format = \"xml\"\n"),
            format!("{good}repeat_interval = \"1s\"\n"),
            format!("{good}secret_file = \"/nonexistent\"\n"),
            good.replace(SECRET, bad_secret),
        ] {
            let message = error(&text);
            for leak in [SECRET, "secretthatmustnotleak", "tokenthatmustnotleak"] {
                assert!(!message.contains(leak), "{message}");
            }
        }
    }
}
