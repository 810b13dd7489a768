//! TEMPORARY: the demo upstream lands from its branch.
pub struct DemoOptions {
    pub workers: usize,
    pub sse: bool,
    pub extra_tools: usize,
}
pub fn spawn(
    _addr: std::net::SocketAddr,
    _opts: DemoOptions,
) -> std::io::Result<std::net::SocketAddr> {
    Err(std::io::Error::other("demo upstream not merged yet"))
}
