use super::*;
use std::io::Write;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    p
}

const BASE: &str = r#"
[runtime]
max_steps = 10

[[datasets]]
name = "a"
path = "a.jsonl"
format = "jsonl"

[[datasets]]
name = "b"
path = "b.txt"
format = "text"
"#;

fn load(text: &str, overrides: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "c.toml", text);
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let e: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::load_with_env(&p, &o, &e)
}

#[test]
fn base_loads_with_defaults() {
    let c = load(BASE, &[], &[]).unwrap();
    assert_eq!(c.runtime.max_steps, 10);
    assert_eq!(c.metrics.listen, "127.0.0.1:9464");
    assert_eq!(c.scheduler.update_every, 100);
    assert_eq!(c.scheduler.scorer_steps, 200);
    assert_eq!(c.datasets.len(), 2);
}

#[test]
fn unknown_key_names_file_and_key() {
    let text = BASE.replace("max_steps = 10", "max_steps = 10\nmax_stepz = 3");
    let e = load(&text, &[], &[]).unwrap_err().to_string();
    assert!(e.contains("max_stepz"), "{e}");
    assert!(e.contains("c.toml"), "{e}");
}

#[test]
fn unknown_dataset_key_is_rejected() {
    let text = BASE.replace("format = \"jsonl\"", "format = \"jsonl\"\nfromat = 1");
    let e = load(&text, &[], &[]).unwrap_err().to_string();
    assert!(e.contains("fromat"), "{e}");
}

#[test]
fn wrong_type_names_key() {
    let text = BASE.replace("max_steps = 10", "max_steps = \"ten\"");
    let e = load(&text, &[], &[]).unwrap_err().to_string();
    assert!(e.contains("runtime.max_steps"), "{e}");
    assert!(e.contains("c.toml"), "{e}");
}

#[test]
fn syntax_error_names_file() {
    let e = load("[runtime\nseed = 1", &[], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("c.toml"), "{e}");
}

#[test]
fn missing_file_is_an_error() {
    let e = Config::load(Path::new("/nonexistent/mos.toml"), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/mos.toml"), "{e}");
}

#[test]
fn duplicate_dataset_name_is_refused() {
    let text = BASE.replace("name = \"b\"", "name = \"a\"");
    let e = load(&text, &[], &[]).unwrap_err().to_string();
    assert!(
        e.contains("datasets[1].name") && e.contains("duplicate"),
        "{e}"
    );
}

#[test]
fn non_positive_fixed_weight_is_refused() {
    let text = BASE
        .replace("format = \"jsonl\"", "format = \"jsonl\"\nweight = 0.0")
        .replace("format = \"text\"", "format = \"text\"\nweight = 1.0")
        + "\n[scheduler]\nstrategy = \"fixed\"\n";
    let e = load(&text, &[], &[]).unwrap_err().to_string();
    assert!(e.contains("datasets[0].weight"), "{e}");
    let text = text.replace("weight = 0.0", "weight = -2.0");
    let e = load(&text, &[], &[]).unwrap_err().to_string();
    assert!(e.contains("datasets[0].weight"), "{e}");
}

#[test]
fn fixed_strategy_needs_every_weight() {
    let text = BASE.to_string() + "\n[scheduler]\nstrategy = \"fixed\"\n";
    let e = load(&text, &[], &[]).unwrap_err().to_string();
    assert!(e.contains("weight"), "{e}");
}

#[test]
fn set_overrides_win_over_env_and_file() {
    let c = load(
        BASE,
        &["runtime.max_steps=50", "scheduler.strategy=mos"],
        &[("MOS_RUNTIME__MAX_STEPS", "20"), ("MOS_RUNTIME__SEED", "7")],
    )
    .unwrap();
    assert_eq!(c.runtime.max_steps, 50);
    assert_eq!(c.runtime.seed, 7);
    assert_eq!(c.scheduler.strategy, Strategy::Mos);
}

#[test]
fn bad_override_value_names_the_override() {
    let e = load(BASE, &["runtime.max_steps=abc"], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("runtime.max_steps"), "{e}");
    assert!(e.contains("--set"), "{e}");
    let e = load(BASE, &["runtime.nope=1"], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope"), "{e}");
    assert!(matches!(
        load(BASE, &["no-equals-sign"], &[]),
        Err(ConfigError::BadOverride(_))
    ));
}

#[test]
fn bad_env_value_names_the_variable() {
    let e = load(BASE, &[], &[("MOS_RUNTIME__SEED", "x")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("MOS_RUNTIME__SEED"), "{e}");
}

#[test]
fn temperature_accepts_inf() {
    let text = BASE.to_string() + "\n[scheduler]\ninit_temperature = \"inf\"\ntemperature = 1\n";
    let c = load(&text, &[], &[]).unwrap();
    assert!(c.scheduler.init_temperature.0.is_infinite());
    assert_eq!(c.scheduler.temperature.0, 1.0);
    let text = BASE.to_string() + "\n[scheduler]\ntemperature = 0\n";
    assert!(load(&text, &[], &[]).is_err());
}

#[test]
fn target_must_name_a_dataset() {
    let text = BASE.to_string() + "\n[scheduler]\ntarget = \"zzz\"\n";
    let e = load(&text, &[], &[]).unwrap_err().to_string();
    assert!(e.contains("scheduler.target"), "{e}");
}

#[test]
fn model_shape_rules() {
    let text = BASE.to_string() + "\n[model]\nd_model = 96\nn_heads = 4\nn_kv_heads = 3\n";
    let e = load(&text, &[], &[]).unwrap_err().to_string();
    assert!(e.contains("model.n_kv_heads"), "{e}");
}

#[test]
fn no_datasets_is_an_error() {
    let e = load("[runtime]\nseed = 1\n", &[], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("datasets"), "{e}");
}

#[test]
fn relative_paths_resolve_against_the_config_dir() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir, "a.jsonl", "{\"text\":\"x\"}\n");
    let p = write(&dir, "c.toml", BASE);
    let c = Config::load_with_env(&p, &[], &[]).unwrap();
    assert_eq!(c.datasets[0].path, dir.path().join("a.jsonl"));
}

#[test]
fn pretrained_path_resolves_and_excludes_a_separate_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{BASE}\n[model]\npretrained = \"models/m.gguf\"\n");
    let p = write(&dir, "c.toml", &text);
    let c = Config::load_with_env(&p, &[], &[]).unwrap();
    assert_eq!(
        c.model.pretrained.as_deref(),
        Some(dir.path().join("models/m.gguf").as_path())
    );
    assert_eq!(c.model.chat_template, ChatTemplate::Auto);
    assert!(!c.runtime.export_hf);
    let e = load(
        &text,
        &["model.tokenizer=hf", "model.tokenizer_path=t.json"],
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("model.tokenizer"), "{e}");
}
