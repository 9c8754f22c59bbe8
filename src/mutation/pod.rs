//! A borrowed, partial view of a Pod: only the fields the injection decision needs.
//!
//! Decoding a whole `k8s_openapi::api::core::v1::Pod` allocates every string, probe and managed
//! field of the object; the admission path only needs names. Unknown fields are skipped by serde
//! without allocation, and strings borrow from the request body unless they contain escapes.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

/// A string that borrows from the input when it can.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Str<'a>(pub Cow<'a, str>);

impl Str<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The pod fields the mutation reads.
#[derive(Debug, Default, Deserialize)]
pub struct Pod<'a> {
    #[serde(borrow, default)]
    pub metadata: Option<Metadata<'a>>,
    #[serde(borrow, default)]
    pub spec: Option<Spec<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Metadata<'a> {
    #[serde(borrow, default)]
    pub namespace: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub labels: Option<Labels<'a>>,
    #[serde(borrow, default)]
    pub annotations: Option<Annotations<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec<'a> {
    #[serde(borrow, default)]
    pub service_account_name: Option<Str<'a>>,
    /// Deprecated alias the API server still mirrors; read only when the name is absent.
    #[serde(borrow, default)]
    pub service_account: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub node_selector: Option<NodeSelector<'a>>,
    #[serde(borrow, default)]
    pub volumes: Option<Vec<Named<'a>>>,
    #[serde(borrow, default)]
    pub init_containers: Option<Vec<Container<'a>>>,
    #[serde(borrow, default)]
    pub containers: Option<Vec<Container<'a>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container<'a> {
    #[serde(borrow, default)]
    pub name: Str<'a>,
    #[serde(borrow, default)]
    pub env: Option<Vec<Named<'a>>>,
    #[serde(borrow, default)]
    pub volume_mounts: Option<Vec<Mount<'a>>>,
    #[serde(borrow, default)]
    pub restart_policy: Option<Str<'a>>,
}

/// A list item identified by `name` (volumes, env vars).
#[derive(Debug, Default, Deserialize)]
pub struct Named<'a> {
    #[serde(borrow, default)]
    pub name: Str<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount<'a> {
    #[serde(borrow, default)]
    pub name: Str<'a>,
    #[serde(borrow, default)]
    pub mount_path: Str<'a>,
}

/// Defines a map view that keeps only the values of a few known keys, so reading labels or
/// annotations never builds a map of everything in them.
macro_rules! picked_map {
    ($(#[$doc:meta])* $name:ident { $($field:ident => $key:expr),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Default)]
        pub struct $name<'a> {
            $(pub $field: Option<Str<'a>>,)*
        }

        impl<'de: 'a, 'a> Deserialize<'de> for $name<'a> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V<'a>(std::marker::PhantomData<&'a ()>);
                impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
                    type Value = $name<'a>;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("a map of strings")
                    }
                    fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Self::Value, M::Error> {
                        let mut out = $name::default();
                        while let Some(key) = m.next_key::<Str<'de>>()? {
                            match key.as_str() {
                                $(k if k == $key => out.$field = m.next_value::<Option<Str<'de>>>()?,)*
                                _ => { m.next_value::<IgnoredAny>()?; }
                            }
                        }
                        Ok(out)
                    }
                }
                d.deserialize_map(V(std::marker::PhantomData))
            }
        }
    };
}

picked_map!(
    /// The labels the webhook reads.
    Labels { inject => crate::mutation::INJECT_LABEL }
);
picked_map!(
    /// The annotations the webhook reads; the map itself being present matters for the patch.
    Annotations {
        skip_containers => crate::mutation::SKIP_CONTAINERS_ANNOTATION,
        association => crate::mutation::ASSOCIATION_ANNOTATION,
    }
);
picked_map!(
    /// The node selector keys that change the injection.
    NodeSelector { os => "kubernetes.io/os" }
);

impl<'a> Pod<'a> {
    /// Parses a pod from JSON bytes, borrowing strings from them.
    pub fn from_slice(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The pod's service account; the API server's default when none is named.
    pub fn service_account(&self) -> &str {
        let spec = self.spec.as_ref();
        spec.and_then(|s| s.service_account_name.as_ref())
            .or_else(|| spec.and_then(|s| s.service_account.as_ref()))
            .map(Str::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
    }

    pub fn namespace(&self) -> Option<&str> {
        self.metadata
            .as_ref()
            .and_then(|m| m.namespace.as_ref())
            .map(Str::as_str)
            .filter(|s| !s.is_empty())
    }

    pub fn label_inject(&self) -> Option<&str> {
        self.metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .and_then(|l| l.inject.as_ref())
            .map(Str::as_str)
    }

    pub fn annotations(&self) -> Option<&Annotations<'a>> {
        self.metadata.as_ref().and_then(|m| m.annotations.as_ref())
    }

    pub fn node_os(&self) -> Option<&str> {
        self.spec
            .as_ref()
            .and_then(|s| s.node_selector.as_ref())
            .and_then(|n| n.os.as_ref())
            .map(Str::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrows_plain_strings_and_skips_unknown_fields() {
        let json = br#"{"metadata":{"labels":{"a":"b","podidentity.io/inject":"false"},
            "annotations":{"podidentity.io/skip-containers":"x,y"},"managedFields":[{"x":1}]},
            "spec":{"serviceAccountName":"app","containers":[{"name":"c","image":"i",
            "env":[{"name":"A","valueFrom":{"fieldRef":{"fieldPath":"x"}}}]}]}}"#;
        let pod = Pod::from_slice(json).unwrap();
        assert_eq!(pod.service_account(), "app");
        assert_eq!(pod.label_inject(), Some("false"));
        let skip = pod.annotations().unwrap().skip_containers.as_ref().unwrap();
        assert!(matches!(skip.0, Cow::Borrowed("x,y")));
        let c = &pod.spec.as_ref().unwrap().containers.as_ref().unwrap()[0];
        assert_eq!(c.env.as_ref().unwrap()[0].name.as_str(), "A");
        assert!(c.volume_mounts.is_none());
    }

    #[test]
    fn empty_or_missing_service_account_means_default() {
        assert_eq!(Pod::from_slice(b"{}").unwrap().service_account(), "default");
        let pod = Pod::from_slice(br#"{"spec":{"serviceAccountName":""}}"#).unwrap();
        assert_eq!(pod.service_account(), "default");
        let pod = Pod::from_slice(br#"{"spec":{"serviceAccount":"legacy"}}"#).unwrap();
        assert_eq!(pod.service_account(), "legacy");
    }

    #[test]
    fn nulls_read_as_absent_and_wrong_types_are_errors() {
        let pod = Pod::from_slice(br#"{"metadata":{"annotations":null},"spec":{"volumes":null}}"#).unwrap();
        assert!(pod.annotations().is_none());
        assert!(pod.spec.unwrap().volumes.is_none());
        assert!(Pod::from_slice(br#"{"spec":{"containers":"nope"}}"#).is_err());
        assert!(Pod::from_slice(br#"{"metadata":{"labels":{"podidentity.io/inject":1}}}"#).is_err());
    }
}
