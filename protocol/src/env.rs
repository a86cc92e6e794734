//! Environment overrides of a configuration tree, the one mechanism the agent
//! (`FLEET_AGENT_*`) and the server (`FLEET_*`) use.
//!
//! Pure like the rest of the crate: the caller hands in how a variable is
//! looked up (`|k| std::env::var(k).ok()` in a binary, a table in a test).
//! Each call names one variable and the field it overrides; a value that does
//! not convert is an [`EnvError`] naming the variable and the value.
//!
//! ```
//! use fleet_protocol::env::Overrides;
//!
//! let mut port: u16 = 80;
//! let mut name = String::from("a");
//! let env = Overrides::new(|k| (k == "APP_PORT").then(|| "8080".to_owned()));
//! env.parse("APP_PORT", &mut port).unwrap();
//! env.set("APP_NAME", &mut name, |v| v);
//! assert_eq!((port, name.as_str()), (8080, "a"));
//! ```

use std::error::Error;
use std::str::FromStr;

/// A variable whose value does not convert to its field's type.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {var}={value:?} is invalid: {source}")]
pub struct EnvError {
    pub var: &'static str,
    pub value: String,
    #[source]
    pub source: Box<dyn Error + Send + Sync>,
}

/// Applies overrides read through a lookup function.
pub struct Overrides<F> {
    lookup: F,
}

impl<F: Fn(&'static str) -> Option<String>> Overrides<F> {
    pub fn new(lookup: F) -> Self {
        Self { lookup }
    }

    /// If `var` is set, `field` becomes `convert(value)` (paths, strings,
    /// secrets: conversions that cannot fail).
    pub fn set<T>(&self, var: &'static str, field: &mut T, convert: impl FnOnce(String) -> T) {
        if let Some(value) = (self.lookup)(var) {
            *field = convert(value);
        }
    }

    /// If `var` is set, `field` becomes its value parsed with [`FromStr`].
    pub fn parse<T>(&self, var: &'static str, field: &mut T) -> Result<(), EnvError>
    where
        T: FromStr,
        T::Err: Into<Box<dyn Error + Send + Sync>>,
    {
        self.try_set(var, field, |v| v.parse::<T>())
    }

    /// If `var` is set, `field` becomes `convert(value)`, or the conversion's
    /// error is reported with the variable's name and value.
    pub fn try_set<T, E>(
        &self,
        var: &'static str,
        field: &mut T,
        convert: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<(), EnvError>
    where
        E: Into<Box<dyn Error + Send + Sync>>,
    {
        if let Some(value) = (self.lookup)(var) {
            match convert(&value) {
                Ok(v) => *field = v,
                Err(e) => {
                    return Err(EnvError {
                        var,
                        value,
                        source: e.into(),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(var, _)| *var == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn unset_variables_leave_the_field_alone() {
        let env = Overrides::new(table(&[]));
        let mut n = 7u64;
        let mut s = String::from("file");
        env.parse("N", &mut n).unwrap();
        env.set("S", &mut s, |v| v);
        env.try_set("S", &mut s, |_| Err::<String, _>("never called"))
            .unwrap();
        assert_eq!((n, s.as_str()), (7, "file"));
    }

    #[test]
    fn set_variables_override_through_their_conversion() {
        let env = Overrides::new(table(&[("N", "42"), ("P", "/srv"), ("O", "x")]));
        let mut n = 0u64;
        let mut p = std::path::PathBuf::new();
        let mut o: Option<String> = None;
        env.parse("N", &mut n).unwrap();
        env.set("P", &mut p, Into::into);
        env.set("O", &mut o, Some);
        assert_eq!(n, 42);
        assert_eq!(p, std::path::PathBuf::from("/srv"));
        assert_eq!(o.as_deref(), Some("x"));
    }

    #[test]
    fn bad_values_name_the_variable_and_keep_the_field() {
        let env = Overrides::new(table(&[("N", "soon"), ("K", "docker")]));
        let mut n = 3u64;
        let err = env.parse("N", &mut n).unwrap_err();
        assert_eq!((err.var, err.value.as_str(), n), ("N", "soon", 3));
        assert!(
            err.to_string()
                .starts_with("environment variable N=\"soon\"")
        );
        assert!(err.source().is_some());
        let mut k = "crun";
        let err = env
            .try_set("K", &mut k, |v| match v {
                "crun" | "runc" => Ok("ok"),
                _ => Err("expected crun or runc"),
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable K=\"docker\" is invalid: expected crun or runc"
        );
        assert_eq!(k, "crun");
    }

    proptest::proptest! {
        #[test]
        fn numbers_override_exactly_and_garbage_never_does(value in "\\PC{0,12}") {
            let lookup = |_: &'static str| Some(value.clone());
            let env = Overrides::new(lookup);
            let mut n = 5u32;
            match (env.parse("N", &mut n), value.parse::<u32>()) {
                (Ok(()), Ok(v)) => proptest::prop_assert_eq!(n, v),
                (Err(e), Err(_)) => {
                    proptest::prop_assert_eq!(n, 5);
                    proptest::prop_assert_eq!(e.var, "N");
                    proptest::prop_assert_eq!(e.value, value.clone());
                }
                (got, want) => proptest::prop_assert!(false, "{got:?} vs {want:?}"),
            }
        }
    }
}
