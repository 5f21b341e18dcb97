# fleetgate's operations on a Linux host; run as: bash -c "$(cat host.sh)" fleetgate-host OP WORKDIR ...
# Releases live in WORKDIR/releases/NAME; WORKDIR/current is a symlink to the one in service.
set -euo pipefail
op=$1
wd=$2
shift 2
case $wd in "~") wd=$HOME ;; "~/"*) wd="$HOME/${wd#"~/"}" ;; esac

case $op in
  state)
    cur=""
    if [ -L "$wd/current" ]; then cur=$(basename "$(readlink "$wd/current")"); fi
    echo "current $cur"
    if [ -d "$wd/releases" ]; then
      for dir in "$wd"/releases/*/; do
        [ -f "$dir/release.json" ] || continue
        status=ok
        if [ -f "$dir/FAILED" ]; then status=failed; fi
        printf 'release %s %s ' "$(basename "$dir")" "$status"
        tr -d '\n' <"$dir/release.json"
        echo
      done
    fi
    ;;
  pack)
    tar -C "$wd/releases/$1" -cf - .
    ;;
  unpack)
    mkdir -p "$wd/releases"
    incoming="$wd/releases/.incoming-$1"
    rm -rf "$incoming"
    mkdir "$incoming"
    tar -C "$incoming" -xf -
    find "$incoming" -name '*.sh' -exec chmod +x {} +
    # a release directory appears whole or not at all
    mv -T "$incoming" "$wd/releases/$1"
    ;;
  activate)
    # rename(2) of a fresh symlink over the old one: current is always the old or the new release
    ln -sfn "releases/$1" "$wd/.current.tmp"
    mv -Tf "$wd/.current.tmp" "$wd/current"
    ;;
  mark-failed)
    printf '%s\n' "$2" >"$wd/releases/$1/FAILED"
    ;;
  write-meta)
    printf '%s\n' "$2" >"$wd/releases/$1/.release.json.tmp"
    mv -f "$wd/releases/$1/.release.json.tmp" "$wd/releases/$1/release.json"
    ;;
  unit)
    release=$1 script=$2
    shift 2
    exec bash "$wd/releases/$release/$script" "$@"
    ;;
  *)
    echo "unknown operation $op" >&2
    exit 2
    ;;
esac
