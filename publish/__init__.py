"""Write-audit-publish: versioned snapshots of the marts, swapped in atomically."""
