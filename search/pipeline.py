"""``python -m search.pipeline``: the command the README and the Makefile give for the whole
study. The pipeline drives the searches and the report, so it lives above both layers, in
tunefuse/pipeline.py; this module holds no code of its own and imports nothing from there (a
search module must not depend on the layer above it): it runs that module as the program.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("tunefuse.pipeline", run_name="__main__", alter_sys=True)
