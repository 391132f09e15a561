// The `kronfac` command line; everything it does lives in KronfacCLI.
import KronfacCLI

KronfacMain.main()
