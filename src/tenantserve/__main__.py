from tenantserve.cli import main

main()
