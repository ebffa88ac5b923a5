# Sourced by Scalingo at the start of every container (web, background, one-off), after the
# APT buildpack's own 000_apt.sh. Keep it POSIX sh.

# The Rust buildpack leaves the binary in target/release: `replicator` works in one-offs too.
export PATH="$HOME/target/release:$PATH"

# The stack's /usr/bin/pg_restore is a wrapper that only sees the stack's own client (16 on
# scalingo-24). A newer client from the Aptfile lands in .apt/usr/lib/postgresql/NN/bin: put it
# first, the highest version first (the glob sorts ascending and each one is prepended).
for dir in "$HOME"/.apt/usr/lib/postgresql/*/bin; do
  if [ -x "$dir/pg_restore" ]; then
    PATH="$dir:$PATH"
  fi
done
export PATH
