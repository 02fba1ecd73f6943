pub mod http;
pub mod limits;
