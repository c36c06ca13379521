"""The end-to-end runs behind work.sh: stage engine, task pipelines, reports, plots, benchmark."""
