//! YAML → Config. (Being written: see ARCHITECTURE.md.)
use super::Config;

#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}
impl std::error::Error for ConfigErrors {}

pub fn load_str(_text: &str) -> Result<Config, ConfigErrors> {
    Err(ConfigErrors(vec!["not implemented".into()]))
}
pub fn load_file(path: &std::path::Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
    load_str(&text)
}
pub fn render_effective(_c: &Config) -> String {
    String::new()
}
