//! Runs the embedded default scenario and prints the markdown report (what `veritrace simulate`
//! prints), with the wall time on stderr.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let start = std::time::Instant::now();
    let sim = veritrace_sim::Simulation::new(veritrace_sim::Scenario::default_scenario())?;
    let report = sim.run(&|| {})?;
    print!("{}", veritrace_sim::report::markdown(&report));
    eprintln!("{:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
