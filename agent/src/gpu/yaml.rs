//! YAML → `serde_json::Value`, so one strict serde model reads both forms
//! of a CDI spec. `yaml-rust2` is a pure-Rust YAML 1.2 parser without serde
//! glue (small); it was already in the workspace's lock file.

use yaml_rust2::{Yaml, YamlLoader};

#[derive(Debug)]
pub enum YamlError {
    Scan(yaml_rust2::ScanError),
    Shape(&'static str),
}

/// The first document of `text` as JSON.
pub fn to_json(text: &str) -> Result<serde_json::Value, YamlError> {
    let docs = YamlLoader::load_from_str(text).map_err(YamlError::Scan)?;
    let doc = docs
        .into_iter()
        .next()
        .ok_or(YamlError::Shape("empty document"))?;
    convert(doc)
}

fn convert(y: Yaml) -> Result<serde_json::Value, YamlError> {
    use serde_json::Value;
    Ok(match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Integer(i) => Value::from(i),
        Yaml::Real(r) => r
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or(YamlError::Shape("a number that is not finite"))?,
        Yaml::String(s) => Value::String(s),
        Yaml::Array(items) => {
            Value::Array(items.into_iter().map(convert).collect::<Result<_, _>>()?)
        }
        Yaml::Hash(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                let key = match k {
                    Yaml::String(s) => s,
                    Yaml::Integer(i) => i.to_string(),
                    _ => return Err(YamlError::Shape("a mapping key that is not a string")),
                };
                out.insert(key, convert(v)?);
            }
            Value::Object(out)
        }
        Yaml::Alias(_) => return Err(YamlError::Shape("YAML aliases are not supported")),
        Yaml::BadValue => return Err(YamlError::Shape("a value YAML cannot represent")),
    })
}
