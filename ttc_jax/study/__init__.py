"""The study: the search sweep over budgets and difficulty bins, its report and figures."""
