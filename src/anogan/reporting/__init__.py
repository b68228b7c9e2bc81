"""What a run or a sweep writes for people: the report, figures, dashboards and sweep summaries."""
