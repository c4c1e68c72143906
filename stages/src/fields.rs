//! The field names of a serde struct, read from its `Deserialize` implementation, so that
//! unknown keys can be reported all at once with "did you mean" suggestions.
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// The names of `T`'s fields (empty if `T` is not a plain struct).
pub fn struct_fields<T: DeserializeOwned + 'static>() -> &'static [&'static str] {
    static CACHE: OnceLock<Mutex<HashMap<TypeId, &'static [&'static str]>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    cache.entry(TypeId::of::<T>()).or_insert_with(|| {
        let mut captured = None;
        let _ = T::deserialize(FieldCapture(&mut captured));
        captured.unwrap_or(&[])
    })
}

struct FieldCapture<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> Deserializer<'de> for FieldCapture<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(de::Error::custom("fields captured"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Example {
        lr: f64,
        #[serde(default)]
        epochs: usize,
    }

    #[test]
    fn captures_field_names() {
        assert_eq!(super::struct_fields::<Example>(), &["lr", "epochs"]);
        assert!(super::struct_fields::<u32>().is_empty());
    }
}
