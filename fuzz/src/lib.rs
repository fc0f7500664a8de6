//! Sluice's fuzz targets share their checks with the ordinary tests.
pub mod checks;
