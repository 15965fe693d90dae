#!/bin/sh
# embed.sh FILE NAME: prints a C file defining `const unsigned char NAME[]` and `NAME_len` with FILE's bytes.
# Leaves out compression and a trailing NUL; the Makefile uses it to put the web page into the server.
set -eu
f=$1
name=$2
echo "/* generated from $f by tools/embed.sh; do not edit */"
echo "#include <stddef.h>"
echo "const unsigned char ${name}[] = {"
od -An -v -tx1 "$f" | sed 's/ *\([0-9a-f][0-9a-f]\)/0x\1,/g'
echo "};"
echo "const size_t ${name}_len = sizeof ${name};"
