#!/usr/bin/env python3
"""Builds the ImageJ plugin jar: build_plugin.py JAR CLASSES_DIR JAVAC JAR_TOOL CLASSPATH CONFIG SOURCES...

Compiles SOURCES against CLASSPATH (ImageJ's ij.jar and isl.jar) with `javac --release 11`
into CLASSES_DIR (emptied first), adds plugins.config (the menu entry) and packs JAR.
"""
import os
import shutil
import subprocess
import sys


def main(argv):
    if len(argv) < 7:
        sys.exit(__doc__)
    out_jar, classes, javac, jar_tool, classpath, config = argv[:6]
    shutil.rmtree(classes, ignore_errors=True)
    os.makedirs(classes)
    subprocess.run([javac, "--release", "11", "-encoding", "UTF-8", "-Xlint:all,-options",
                    "-cp", classpath, "-d", classes] + argv[6:], check=True)
    shutil.copy(config, os.path.join(classes, "plugins.config"))
    tmp = out_jar + ".tmp"
    subprocess.run([jar_tool, "--create", "--file", tmp, "-C", classes, "."], check=True)
    os.replace(tmp, out_jar)


if __name__ == "__main__":
    main(sys.argv[1:])
