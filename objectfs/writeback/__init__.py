"""Write-back: files staged durably on local disk at close, uploaded in the background."""
