//! The score methods recipes can name, and [`Method`], a method as a recipe or `scores.json`
//! names it (serialised as its name).
use super::ash::{Ash, Shaping};
use super::dice::Dice;
use super::energy::Energy;
use super::gen::Gen;
use super::gradnorm::GradNorm;
use super::kl_matching::KlMatching;
use super::knn::Knn;
use super::mahalanobis::Mahalanobis;
use super::maxlogit::MaxLogit;
use super::msp::Msp;
use super::odin::Odin;
use super::react::React;
use super::rmds::Rmds;
use super::scorer::ScoreMethod;
use super::vim::Vim;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// Every score method; adding one is a file in `scores/` and one line here.
pub fn registry() -> &'static [&'static dyn ScoreMethod] {
    &[
        &Msp,
        &Energy,
        &Odin,
        &Mahalanobis,
        &MaxLogit,
        &Gen,
        &GradNorm,
        &React,
        &Knn,
        &Ash(Shaping::Prune),
        &Ash(Shaping::Binarize),
        &Ash(Shaping::Scale),
        &Dice,
        &KlMatching,
        &Vim,
        &Rmds,
    ]
}

/// The names of every method, in registry order.
pub fn names() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| registry().iter().map(|m| m.name()).collect())
}

/// The names of the methods of the [`registry`] for which `which` holds, in registry order:
/// messages that list methods (those that need a fitted Gaussian, say) take them from here.
pub fn names_where(which: impl Fn(&dyn ScoreMethod) -> bool) -> Vec<&'static str> {
    registry().iter().filter(|m| which(**m)).map(|m| m.name()).collect()
}

/// Method names as prose, each in backquotes: "`a`", "`a` and `b`", "`a`, `b` and `c`" (with
/// `conjunction` in place of "and").
pub fn prose_list(names: &[&str], conjunction: &str) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} {conjunction} {last}", rest.join(", ")),
    }
}

/// A score method of the [`registry`].
#[derive(Clone, Copy)]
pub struct Method(&'static dyn ScoreMethod);

impl Method {
    /// The method called `name`.
    pub fn named(name: &str) -> Option<Method> {
        registry().iter().find(|m| m.name() == name).map(|&m| Method(m))
    }

    pub fn name(self) -> &'static str {
        self.0.name()
    }

    pub fn get(self) -> &'static dyn ScoreMethod {
        self.0
    }
}

impl std::fmt::Debug for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl PartialEq for Method {
    fn eq(&self, other: &Method) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Method {}

impl Serialize for Method {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Method {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Method, D::Error> {
        let name = String::deserialize(d)?;
        Method::named(&name).ok_or_else(|| serde::de::Error::unknown_variant(&name, names()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_round_trip_through_their_names_and_unknown_ones_list_the_known() {
        for &name in names() {
            let method: Method = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(serde_json::to_value(method).unwrap(), serde_json::json!(name));
        }
        let error = serde_json::from_value::<Method>(serde_json::json!("vim-typo")).unwrap_err().to_string();
        assert!(error.contains("unknown variant `vim-typo`") && error.contains("`mahalanobis`"), "{error}");
    }

    #[test]
    fn lists_of_methods_come_from_the_registry_and_read_as_prose() {
        assert_eq!(names_where(|m| m.needs_gaussian()), ["mahalanobis", "rmds"]);
        assert_eq!(names_where(|_| true), names());
        assert_eq!(prose_list(&[], "and"), "");
        assert_eq!(prose_list(&["msp"], "and"), "`msp`");
        assert_eq!(prose_list(&["msp", "odin"], "or"), "`msp` or `odin`");
        assert_eq!(prose_list(&["msp", "odin", "knn"], "and"), "`msp`, `odin` and `knn`");
    }
}
