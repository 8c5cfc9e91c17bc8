# (sourced text, pasted by debian/rules into each package's postinst and
# prerm at #PYCOMPILE#: dpkg knows no byte code, so each package compiles and
# removes its own, found from its own file list.)
# The top-level entries of site-packages this package owns; split-venv
# guarantees no two packages share one.
loomd_own_roots() {
    dpkg-query -L "$DPKG_MAINTSCRIPT_PACKAGE" 2>/dev/null \
        | sed -n 's|^\(/usr/lib/loomd/lib/python3[.0-9]*/site-packages/[^/]*\).*|\1|p' | sort -u
}
loomd_pycompile() {
    # Not shipped: .pyc files embed build paths, and the unit's
    # ProtectSystem=strict would keep the daemon from caching them (every
    # start on a Pi would recompile every module).
    # shellcheck disable=SC2046 # one argument per root, no spaces in them
    /usr/lib/loomd/bin/python3 -m compileall -q -j 0 $(loomd_own_roots) >/dev/null 2>&1 || true
}
loomd_pyclean() {
    loomd_own_roots | while read -r root; do
        if [ -d "$root" ] && [ ! -L "$root" ]; then
            find "$root" -depth -type d -name __pycache__ -exec rm -rf {} +
        else
            case $root in *.py)
                base=${root##*/}
                rm -f "${root%/*}/__pycache__/${base%.py}".cpython-*.pyc ;;
            esac
        fi
    done
    rmdir --ignore-fail-on-non-empty /usr/lib/loomd/lib/python3*/site-packages/__pycache__ 2>/dev/null || true
}
