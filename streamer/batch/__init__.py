"""YAML batch jobs: ``nystra-stream batch JOBS.yaml``.

``JOBS.yaml ─validate─▶ plan (jobs × inputs → outputs, run or skip from manifests) ─▶ executor
(one child process per task) ─▶ manifest + report``. Modules, in import order: :mod:`.yamlfile`
(safe loading that keeps each value's line), :mod:`.schema` (the file's structure, generated from
:class:`streamer.options.Options`), :mod:`.plan` (inputs, output templates, the checks across jobs),
:mod:`.manifest` (what a finished task records, and the skip rule), :mod:`.task` (one task, run in a
child process), :mod:`.executors`, :mod:`.report`, :mod:`.command` (the subcommand).
"""
