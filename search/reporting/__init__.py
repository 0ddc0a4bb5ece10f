"""Reading a run: results, the HTML report, status."""
