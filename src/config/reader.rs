//! A walker over a parsed TOML table that records every problem with its key path instead of stopping at the first,
//! and reports keys nobody asked for as unknown (a typo is an error, never ignored).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::duration::parse_duration;
use super::error::ConfigErrors;
use super::names::Choice;

/// A value type that can be read from one TOML value, with a reason when it cannot.
pub trait FromToml: Sized {
    fn from_toml(value: &toml::Value) -> Result<Self, String>;
}

fn type_error(expected: &str, value: &toml::Value) -> String {
    format!("expected {expected}, got {} {value}", value.type_str())
}

impl FromToml for bool {
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        value.as_bool().ok_or_else(|| type_error("true or false", value))
    }
}

impl FromToml for String {
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        value
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| type_error("a string", value))
    }
}

impl FromToml for i64 {
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        value.as_integer().ok_or_else(|| type_error("an integer", value))
    }
}

impl FromToml for f64 {
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::Float(number) => Ok(*number),
            toml::Value::Integer(number) => Ok(*number as f64),
            other => Err(type_error("a number", other)),
        }
    }
}

impl FromToml for Vec<String> {
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        let items = value.as_array().ok_or_else(|| type_error("a list of strings", value))?;
        items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| type_error("a string in the list", item))
            })
            .collect()
    }
}

impl FromToml for Vec<i64> {
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        let items = value
            .as_array()
            .ok_or_else(|| type_error("a list of integers", value))?;
        items
            .iter()
            .map(|item| {
                item.as_integer()
                    .ok_or_else(|| type_error("an integer in the list", item))
            })
            .collect()
    }
}

impl FromToml for toml::Value {
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        Ok(value.clone())
    }
}

impl FromToml for Duration {
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        let text = value
            .as_str()
            .ok_or_else(|| type_error("a duration string such as \"10s\"", value))?;
        parse_duration(text)
    }
}

impl FromToml for IpAddr {
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        let text = value
            .as_str()
            .ok_or_else(|| type_error("an IP address string", value))?;
        text.parse().map_err(|_| format!("{text:?} is not an IP address"))
    }
}

impl FromToml for SocketAddr {
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        let text = value
            .as_str()
            .ok_or_else(|| type_error("an \"ip:port\" string", value))?;
        text.parse()
            .map_err(|_| format!("{text:?} is not an \"ip:port\" address"))
    }
}

/// One table of the config being read: where it sits (for error keys) and which of its keys were asked for.
pub struct Section<'a> {
    path: String,
    table: Option<&'a toml::Table>,
    known: Vec<&'static str>,
}

impl<'a> Section<'a> {
    pub fn root(table: &'a toml::Table) -> Self {
        Section {
            path: String::new(),
            table: Some(table),
            known: Vec::new(),
        }
    }

    /// The full key path of `key` in this section, as shown in errors.
    pub fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn raw(&mut self, key: &'static str) -> Option<&'a toml::Value> {
        self.known.push(key);
        self.table.and_then(|table| table.get(key))
    }

    /// Whether `key` is present (without counting it as read).
    pub fn has(&self, key: &str) -> bool {
        self.table.is_some_and(|table| table.contains_key(key))
    }

    /// Reads `key` if present. A present value of the wrong type or shape is recorded and yields `None`.
    pub fn optional<T: FromToml>(&mut self, key: &'static str, errors: &mut ConfigErrors) -> Option<T> {
        let value = self.raw(key)?;
        match T::from_toml(value) {
            Ok(parsed) => Some(parsed),
            Err(reason) => {
                errors.push(self.key_path(key), reason);
                None
            }
        }
    }

    /// Reads `key`, falling back to `default` when absent or invalid (invalid is recorded).
    pub fn or<T: FromToml>(&mut self, key: &'static str, default: T, errors: &mut ConfigErrors) -> T {
        self.optional(key, errors).unwrap_or(default)
    }

    /// Reads a required `key`; absence is recorded.
    pub fn required<T: FromToml>(&mut self, key: &'static str, errors: &mut ConfigErrors) -> Option<T> {
        if self.table.is_none_or(|table| !table.contains_key(key)) {
            self.known.push(key);
            errors.push(self.key_path(key), "is required");
            return None;
        }
        self.optional(key, errors)
    }

    /// Reads an integer and checks it lies in `min..=max`.
    pub fn integer_in(
        &mut self,
        key: &'static str,
        default: i64,
        min: i64,
        max: i64,
        errors: &mut ConfigErrors,
    ) -> i64 {
        let Some(value) = self.optional::<i64>(key, errors) else {
            return default;
        };
        if value < min || value > max {
            errors.push(
                self.key_path(key),
                format!("must be between {min} and {max}, got {value}"),
            );
            return default;
        }
        value
    }

    /// Reads a duration that must be strictly positive.
    pub fn positive_duration(&mut self, key: &'static str, default: Duration, errors: &mut ConfigErrors) -> Duration {
        let Some(value) = self.optional::<Duration>(key, errors) else {
            return default;
        };
        if value.is_zero() {
            errors.push(self.key_path(key), "must be greater than zero");
            return default;
        }
        value
    }

    /// Reads a string that must be one of `choices`, mapping it to its value.
    pub fn choice<T: Choice>(&mut self, key: &'static str, default: T, errors: &mut ConfigErrors) -> T {
        let Some(text) = self.optional::<String>(key, errors) else {
            return default;
        };
        T::from_name(&text).unwrap_or_else(|| {
            errors.push(
                self.key_path(key),
                format!("must be one of {}, got {text:?}", T::listed()),
            );
            default
        })
    }

    /// A nested table; an absent one reads as empty so every key takes its default.
    pub fn section(&mut self, key: &'static str, errors: &mut ConfigErrors) -> Section<'a> {
        let path = self.key_path(key);
        let table = match self.raw(key) {
            None => None,
            Some(toml::Value::Table(table)) => Some(table),
            Some(other) => {
                errors.push(path.clone(), type_error("a table", other));
                None
            }
        };
        Section {
            path,
            table,
            known: Vec::new(),
        }
    }

    /// An array of tables (`[[backends]]`), one section per element.
    pub fn array_of_tables(&mut self, key: &'static str, errors: &mut ConfigErrors) -> Vec<Section<'a>> {
        let path = self.key_path(key);
        let Some(value) = self.raw(key) else {
            return Vec::new();
        };
        let Some(items) = value.as_array() else {
            errors.push(path, type_error("an array of tables", value));
            return Vec::new();
        };
        let mut sections = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{index}]");
            match item {
                toml::Value::Table(table) => sections.push(Section {
                    path: item_path,
                    table: Some(table),
                    known: Vec::new(),
                }),
                other => errors.push(item_path, type_error("a table", other)),
            }
        }
        sections
    }

    /// Records every key of this table that no reader asked for.
    pub fn finish(self, errors: &mut ConfigErrors) {
        let Some(table) = self.table else {
            return;
        };
        for key in table.keys() {
            if !self.known.contains(&key.as_str()) {
                let mut expected: Vec<&str> = self.known.clone();
                expected.sort_unstable();
                expected.dedup();
                errors.push(
                    self.key_path(key),
                    format!("unknown key (expected one of: {})", expected.join(", ")),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn collects_every_error_with_its_path() {
        let root = table("a = \"x\"\n[s]\nn = 0\nd = \"5\"\ntypo = 1\n");
        let mut errors = ConfigErrors::default();
        let mut top = Section::root(&root);
        let _ = top.integer_in("a", 1, 1, 10, &mut errors);
        let mut sub = top.section("s", &mut errors);
        let _ = sub.integer_in("n", 1, 1, 10, &mut errors);
        let _ = sub.positive_duration("d", Duration::from_secs(1), &mut errors);
        sub.finish(&mut errors);
        top.finish(&mut errors);
        let text = errors.to_string();
        assert_eq!(errors.len(), 4, "{text}");
        assert!(text.contains("a: expected an integer, got string \"x\""), "{text}");
        assert!(text.contains("s.n: must be between 1 and 10, got 0"), "{text}");
        assert!(text.contains("s.d: missing unit"), "{text}");
        assert!(text.contains("s.typo: unknown key"), "{text}");
    }

    #[test]
    fn array_elements_are_indexed() {
        let root = table("[[b]]\nw = 1\n[[b]]\nw = true\n");
        let mut errors = ConfigErrors::default();
        let mut top = Section::root(&root);
        for mut item in top.array_of_tables("b", &mut errors) {
            let _ = item.integer_in("w", 1, 1, 5, &mut errors);
            item.finish(&mut errors);
        }
        assert_eq!(errors.to_string(), "b[1].w: expected an integer, got boolean true");
    }
}
