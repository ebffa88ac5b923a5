fn main() {
    println!("replicator");
}
