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
#[serde(remote = "Self")]
pub struct Pod<'a> {
    #[serde(borrow, default)]
    pub metadata: Option<Metadata<'a>>,
    #[serde(borrow, default)]
    pub spec: Option<Spec<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(remote = "Self")]
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
#[serde(remote = "Self")]
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
#[serde(remote = "Self")]
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
#[serde(remote = "Self")]
pub struct Named<'a> {
    #[serde(borrow, default)]
    pub name: Str<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(remote = "Self")]
pub struct Mount<'a> {
    #[serde(borrow, default)]
    pub name: Str<'a>,
    #[serde(borrow, default)]
    pub mount_path: Str<'a>,
}

/// A view read from a JSON object only. serde's derive also reads a struct from an array of
/// its fields in order (`[metadata, spec]`), and the patch built for such a "pod" adds object
/// keys into an array, which cannot apply; a Pod and its parts are always objects.
trait FromMap<'de>: Sized {
    const EXPECTING: &'static str;
    fn from_map<M: MapAccess<'de>>(m: M) -> Result<Self, M::Error>;
}

/// `T` from a JSON object, through [`FromMap`].
fn map_only<'de, T: FromMap<'de>, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: FromMap<'de>> Visitor<'de> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(T::EXPECTING)
        }
        fn visit_map<M: MapAccess<'de>>(self, m: M) -> Result<T, M::Error> {
            T::from_map(m)
        }
    }
    d.deserialize_map(V(std::marker::PhantomData))
}

/// The derived view structs (`#[serde(remote = "Self")]`), read from objects only.
macro_rules! map_only {
    ($($name:ident => $expecting:expr),* $(,)?) => {$(
        impl<'de: 'a, 'a> FromMap<'de> for $name<'a> {
            const EXPECTING: &'static str = $expecting;
            fn from_map<M: MapAccess<'de>>(m: M) -> Result<Self, M::Error> {
                $name::deserialize(de::value::MapAccessDeserializer::new(m))
            }
        }

        impl<'de: 'a, 'a> Deserialize<'de> for $name<'a> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                map_only(d)
            }
        }
    )*};
}

map_only!(
    Pod => "struct Pod",
    Metadata => "struct Metadata",
    Spec => "struct Spec",
    Container => "struct Container",
    Named => "struct Named",
    Mount => "struct Mount",
);

/// Defines a map view that keeps only the values of a few known keys, so reading labels or
/// annotations never builds a map of everything in them.
macro_rules! picked_map {
    ($(#[$doc:meta])* $name:ident { $($field:ident => $key:expr),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Default)]
        pub struct $name<'a> {
            $(pub $field: Option<Str<'a>>,)*
        }

        impl<'de: 'a, 'a> FromMap<'de> for $name<'a> {
            const EXPECTING: &'static str = "a map of strings";
            fn from_map<M: MapAccess<'de>>(mut m: M) -> Result<Self, M::Error> {
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

        impl<'de: 'a, 'a> Deserialize<'de> for $name<'a> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                map_only(d)
            }
        }
    };
}

picked_map!(
    /// The labels the webhook reads.
    Labels { inject => crate::webhook::mutation::INJECT_LABEL }
);
picked_map!(
    /// The annotations the webhook reads; the map itself being present matters for the patch.
    Annotations {
        skip_containers => crate::webhook::mutation::SKIP_CONTAINERS_ANNOTATION,
        association => crate::webhook::mutation::ASSOCIATION_ANNOTATION,
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
    fn a_pod_and_its_parts_are_objects_never_arrays() {
        // serde's derive alone reads a struct from an array of its fields: `[]` would be a pod
        // with no metadata and no spec, and its patch (`add /metadata`, `add /spec`) cannot
        // apply to an array (found writing the `review` fuzz target's patch-applies check).
        let derived = Pod::deserialize(&mut serde_json::Deserializer::from_slice(b"[]"));
        assert!(derived.is_ok(), "the derive alone accepts an array");
        for json in [
            &br#"[]"#[..],
            br#"[null, null]"#,
            br#"{"metadata":[]}"#,
            br#"{"spec":[]}"#,
            br#"{"spec":{"containers":[["c"]]}}"#,
            br#"{"spec":{"initContainers":[[]]}}"#,
            br#"{"spec":{"volumes":[["cce-pod-identity-token"]]}}"#,
            br#"{"spec":{"containers":[{"name":"c","env":[["HC_CONTAINER_CREDENTIALS_FULL_URI"]]}]}}"#,
            br#"{"spec":{"containers":[{"name":"c","volumeMounts":[["n","/p"]]}]}}"#,
        ] {
            let err = Pod::from_slice(json).unwrap_err().to_string();
            assert!(err.contains("invalid type: sequence, expected struct"), "{err}");
        }
        let err = Pod::from_slice(br#"{"spec":{"containers":["c"]}}"#).unwrap_err();
        assert!(err.to_string().contains("expected struct Container"), "{err}");
        // Objects read as before, borrowed.
        let pod = Pod::from_slice(br#"{"metadata":{},"spec":{"volumes":[{"name":"v"}],"containers":[{"name":"c","volumeMounts":[{"name":"v","mountPath":"/p"}]}]}}"#).unwrap();
        let spec = pod.spec.as_ref().unwrap();
        assert!(matches!(
            spec.volumes.as_ref().unwrap()[0].name.0,
            Cow::Borrowed("v")
        ));
        let m = &spec.containers.as_ref().unwrap()[0]
            .volume_mounts
            .as_ref()
            .unwrap()[0];
        assert_eq!((m.name.as_str(), m.mount_path.as_str()), ("v", "/p"));
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
