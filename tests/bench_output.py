"""Reading what the benchmarks print: their markdown tables."""


def markdown_tables(lines: list[str]) -> list[list[dict[str, str]]]:
    """The markdown tables among `lines`, in order, each as a list of rows mapping column to cell."""
    tables, index = [], 0
    while index < len(lines):
        if not lines[index].startswith("|"):
            index += 1
            continue
        columns = [cell.strip() for cell in lines[index].strip("|").split("|")]
        index += 2
        rows = []
        while index < len(lines) and lines[index].startswith("|"):
            rows.append(dict(zip(columns, (cell.strip() for cell in lines[index].strip("|").split("|")))))
            index += 1
        tables.append(rows)
    return tables


__all__ = ["markdown_tables"]
