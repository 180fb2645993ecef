"""What every asset module's checks share: a contract result as a Dagster check result."""

import dagster as dg

from pipelines.contracts import ContractResult
from pipelines.reporting import markdown_table


def check_result(result: ContractResult) -> dg.AssetCheckResult:
    metadata: dict[str, object] = {"rows": result.rows, "rows_checked": result.rows_checked, "message": result.message}
    if result.failure_cases is not None:
        metadata["failure_cases"] = dg.MetadataValue.md(markdown_table(result.failure_cases, max_rows=20))
        metadata["num_failure_cases"] = result.failure_cases.height
    return dg.AssetCheckResult(passed=result.passed, metadata=metadata, description=result.message)
