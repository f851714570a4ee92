#!/bin/sh
# Refuses to let the stack start while a secret is still a placeholder. Run by the `preflight` service of
# docker-compose.yaml, which every other service waits for (condition: service_completed_successfully).
#
#   preflight.sh NAME[:MIN] ...    names of environment variables holding passwords or keys, each with
#                                  its minimum length (default 12: MLflow refuses shorter passwords)
#
# Exits 1, naming the variables, if any of them is empty, contains the `change-me` placeholder of
# .env.example, or is shorter than its minimum; 0 otherwise. POSIX sh: runs on busybox.
set -u

DEFAULT_MIN_LENGTH=12

if [ "$#" -eq 0 ]; then
    echo "preflight: no variable names given: nothing to check (see the preflight service)" >&2
    exit 2
fi

empty=""
placeholder=""
short=""
for spec in "$@"; do
    name="${spec%%:*}"
    min="${spec#"${name}"}"
    min="${min#:}"
    case "${name}" in
        "" | [0-9]* | *[!A-Za-z0-9_]*)
            echo "preflight: '${spec}' is not NAME or NAME:MIN_LENGTH" >&2
            exit 2
            ;;
    esac
    case "${min}" in
        "") min="${DEFAULT_MIN_LENGTH}" ;;
        *[!0-9]*)
            echo "preflight: '${spec}' is not NAME or NAME:MIN_LENGTH" >&2
            exit 2
            ;;
    esac
    eval "value=\${${name}-}"
    case "${value}" in
        "") empty="${empty} ${name}" ;;
        *[Cc][Hh][Aa][Nn][Gg][Ee]-[Mm][Ee]*) placeholder="${placeholder} ${name}" ;;
        *) [ "${#value}" -ge "${min}" ] || short="${short} ${name}(${min})" ;;
    esac
done

if [ -z "${empty}${placeholder}${short}" ]; then
    echo "preflight: ok ($# secrets checked)"
    exit 0
fi

{
    echo "preflight: refusing to start the stack. Set these in .env (see .env.example), then run"
    echo "'docker compose up' again:"
    [ -z "${placeholder}" ] || echo "  still the change-me placeholder:${placeholder}"
    [ -z "${empty}" ] || echo "  empty:${empty}"
    [ -z "${short}" ] || echo "  too short (minimum length in brackets):${short}"
    echo "Generate values with:  openssl rand -hex 32   (AIRFLOW_FERNET_KEY: see .env.example)"
} >&2
exit 1
